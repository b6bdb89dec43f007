"""`python -m bot bench --quick --json F` runs the benchmarks end to end and writes every expected figure.

A smoke test only: no timing is asserted (the figures depend on the machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_quick_writes_the_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "bot", "bench", "--quick", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "whole bot, 8 speakers" in proc.stdout and "cores" in proc.stdout
    r = json.loads(out.read_text())
    assert {"machine", "floor", "receive", "whole_bot", "delay_in", "delay_out", "runs"} <= r.keys()
    assert r["machine"]["cores"] >= 1 and r["machine"]["cpu"]
    assert r["floor"]["libopus_decode_stereo_us_per_frame"] > 0
    assert r["receive"]["ratio_to_floor"] > 0
    bot = r["whole_bot"]["8"]
    for key in ("cpu_ms_per_speaker_second", "ratio_to_decode_floor", "speakers_per_core", "mb_per_speaker"):
        assert bot[key] > 0, key
    run = r["runs"]["8x200"]
    assert run["health"]["receive_outcomes"]["decoded"] > 0
    assert run["health"]["sessions_opened"] == 8
    assert run["health"]["mixer"]["frames_mixed"] > 0, "translated audio reached discord.py's player"
    d_in = r["delay_in"]["200"]
    for part in ("total_ms", "receive_wait_ms", "chunk_wait_ms", "processing_ms"):
        assert d_in[part]["n"] > 0 and d_in[part]["p50"] is not None and d_in[part]["p99"] is not None, part
    for part in ("total_ms", "wait_ms", "processing_ms"):
        assert r["delay_out"][part]["n"] > 0 and r["delay_out"][part]["p99"] is not None, part
