"""`python -m bot localrt` as a real process: it serves, checks the key, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_cli_serves_until_sigterm(tmp_path):
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text("local:\n  default_output_language: ca\n  api_key_env: TEST_LOCALRT_KEY\n")
    env = {**os.environ, "TEST_LOCALRT_KEY": "sk-from-env"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "localrt", "--port", str(port), "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"ws://127.0.0.1:{port}/v1/realtime/translations?model=m"
    try:
        for _ in range(100):
            try:
                async with connect(url, additional_headers={"Authorization": "Bearer sk-from-env"}) as ws:
                    created = json.loads(await ws.recv())
                break
            except OSError:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("server did not start")
        assert created["type"] == "session.created"
        assert created["session"]["audio"]["output"]["language"] == "ca"  # from the config file
        with pytest.raises(InvalidStatus):
            async with connect(url, additional_headers={"Authorization": "Bearer nope"}):
                pass
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out.decode(errors="replace")
    assert b"bearer token required" in out
