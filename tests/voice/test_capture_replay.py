"""Capture writer → ``bot.voice.replay`` (the ``python -m bot replay`` subcommand) → WAV per member."""

import argparse
import json
import time
import wave

import numpy as np
import pytest

from bot.audio.opus import SILENCE_FRAME
from bot.audio.sink import CollectingSink
from bot.voice import replay
from bot.voice.capture import CaptureWriter
from bot.voice.receiver import VoiceReceiver
from bot.voice.worker import ReceiveWorker
from tests.voice.dave_group import make_group
from tests.voice.peers import SECRET_KEY, XCHACHA, DiscordPeer, similarity, to_stereo_bytes


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    replay.add_arguments(parser)
    return replay.main(parser.parse_args(list(argv)))


def read_wav(path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def write_capture(path, speech, dave_user=None):
    """Record a session through the worker as the live bot does; the clock advances 20 ms a packet."""
    clock = FakeClock()
    capture = CaptureWriter(path, {1: "Ann Lee", 2: "Bob"})
    worker = ReceiveWorker(VoiceReceiver(CollectingSink()), capture=capture, clock=clock)
    worker.start()
    worker.feed_gateway(4, {"mode": XCHACHA, "secret_key": list(SECRET_KEY)})
    worker.feed_gateway(5, {"user_id": "1", "ssrc": 11, "speaking": 1})
    a, b = DiscordPeer(ssrc=11), DiscordPeer(ssrc=22, sequence=65530)
    c = DiscordPeer(ssrc=33, dave_session=dave_user)
    da = a.send_pcm(to_stereo_bytes(speech))
    db = b.send_pcm(to_stereo_bytes(speech[::-1].copy()))
    dc = c.send_pcm(to_stereo_bytes(speech[:9600])) if dave_user is not None else []
    for i, (x, y) in enumerate(zip(da, db, strict=True)):
        if i == 10:
            worker.feed_gateway(5, {"user_id": "2", "ssrc": 22, "speaking": 1})
            worker.feed_gateway(5, {"user_id": "3", "ssrc": 33, "speaking": 1})
        worker.feed_datagram(x)
        worker.feed_datagram(y)
        if i < len(dc):
            worker.feed_datagram(dc[i])
        clock.t += 0.02
    worker.feed_datagram(a.send_opus(SILENCE_FRAME))
    worker.feed_datagram(b"\x81\xc9" + bytes(30))  # RTCP receiver report
    time.sleep(0.05)
    worker.stop()
    return len(da) + len(db) + len(dc) + 2


def test_capture_then_replay(tmp_path, speech, capsys):
    path = tmp_path / "cap.jsonl"
    group = make_group([3, 4])
    total = write_capture(path, speech, dave_user=group[3])
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    assert header == {"parley_capture": 1, "mode": XCHACHA, "secret_key": SECRET_KEY.hex(),
                      "members": {"1": "Ann Lee", "2": "Bob"}}
    assert json.loads(lines[1])["op"] == 5
    out = tmp_path / "out"
    assert run_cli(str(path), "--out", str(out)) == 0
    counters = json.loads(capsys.readouterr().out)
    assert counters["received"] == total
    assert sum(counters["outcomes"].values()) == total and counters["pending"] == 0
    assert counters["outcomes"]["rtcp"] == 1 and counters["outcomes"]["silence"] == 1
    assert counters["outcomes"]["dave_failed"] == 10  # E2EE frames cannot be replayed, only counted
    assert sorted(p.name for p in out.iterdir()) == ["Ann_Lee.wav", "Bob.wav"]
    assert similarity(speech, read_wav(out / "Ann_Lee.wav"))["snr_db"] >= 10
    bob = read_wav(out / "Bob.wav")  # mapped at 0.2 s: his held first packets start there
    assert np.abs(bob[:4700]).max() == 0
    assert similarity(speech[::-1].copy(), bob[4800:])["env_corr"] >= 0.97


def test_replay_places_talk_spurts_on_the_capture_clock(tmp_path, speech):
    path = tmp_path / "gap.jsonl"
    peer = DiscordPeer(ssrc=5)
    first = peer.send_pcm(to_stereo_bytes(speech[:9600]))
    silence = peer.send_opus(SILENCE_FRAME)
    second = peer.send_pcm(to_stereo_bytes(speech[:9600]))
    w = CaptureWriter(path)
    w.start(XCHACHA, SECRET_KEY)
    w.event(0.0, 5, {"user_id": "9", "ssrc": 5, "speaking": 1})
    for i, d in enumerate(first):
        w.datagram(i * 0.02, d)
    w.datagram(0.2, silence)
    for i, d in enumerate(second):
        w.datagram(3.0 + i * 0.02, d)
    w.close()
    _, written = replay.replay(path, tmp_path / "o")
    pcm = read_wav(written[9])
    assert written[9].name == "9.wav"
    assert abs(len(pcm) - int(3.2 * 24000)) <= 960
    assert np.abs(pcm[int(0.5 * 24000) : int(2.9 * 24000)]).max() == 0  # the pause is silence


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "missing parley_capture header"),
        ("not json\n", "first line is not JSON"),
        ('{"t": 0, "data": ""}\n', "missing parley_capture header"),
        ('{"parley_capture": 1, "mode": "x"}\n', "lacks a valid mode/secret_key"),
        ('{"parley_capture": 1, "mode": "x", "secret_key": "zz"}\n', "lacks a valid mode/secret_key"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path, capsys, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    assert run_cli(str(path), "--out", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_missing_file(tmp_path, capsys):
    assert run_cli(str(tmp_path / "nope.jsonl"), "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "cannot open" in err and err.count("\n") == 1


def test_unsupported_mode_counts_no_key_and_torn_lines_are_skipped(tmp_path, capsys):
    path = tmp_path / "m.jsonl"
    d = DiscordPeer(ssrc=1).send_opus(b"\xfc" + bytes(20))
    path.write_text(
        json.dumps({"parley_capture": 1, "mode": "xsalsa20_poly1305", "secret_key": SECRET_KEY.hex()}) + "\n"
        + json.dumps({"t": 0.0, "data": __import__("base64").b64encode(d).decode()}) + "\n"
        + '{"t": 0.1, "da'
    )
    assert run_cli(str(path), "--out", str(tmp_path / "o")) == 0
    counters = json.loads(capsys.readouterr().out)
    assert counters["outcomes"]["no_key"] == 1 and counters["received"] == 1


def test_python_m_bot_replay_subcommand(tmp_path, speech):
    import subprocess
    import sys

    path = tmp_path / "c.jsonl"
    w = CaptureWriter(path, {42: "Ann"})
    w.start(XCHACHA, SECRET_KEY)
    w.event(0.0, 5, {"user_id": "42", "ssrc": 7, "speaking": 1})
    for i, d in enumerate(DiscordPeer(ssrc=7).send_pcm(to_stereo_bytes(speech[:48000]))):
        w.datagram(i * 0.02, d)
    w.close()
    ok = subprocess.run([sys.executable, "-m", "bot", "replay", str(path), "--out", str(tmp_path / "o")],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["outcomes"]["decoded"] == 50
    assert (tmp_path / "o" / "Ann.wav").exists()
    bad = subprocess.run([sys.executable, "-m", "bot", "replay", __file__, "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "not a Parley capture" in bad.stderr


def test_bogus_record_times_do_not_hang(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    w = CaptureWriter(path)
    w.start(XCHACHA, SECRET_KEY)
    w.datagram(1e12, b"\x00\x02" + bytes(70))
    w.datagram(5.0, b"\x00\x02" + bytes(70))
    w.close()
    counters, _ = replay.replay(path, tmp_path / "o")
    assert counters["outcomes"]["not_rtp"] == 2
