"""Opus decoding (mono downmix, FEC, PLC) and the 48→24 kHz framing, against real libopus frames."""

import numpy as np
from discord import opus

from bot.audio.opus import FRAME_SAMPLES, OpusDecoder, packet_has_silk
from bot.audio.resample import FRAME_BYTES, Downsampler


def sine48(freq: float, seconds: float, amp: int = 10000) -> np.ndarray:
    t = np.arange(int(48000 * seconds)) / 48000
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def dominant_freq(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    return float(np.argmax(spec) * rate / len(x))


def test_downsampler_frames_and_keeps_pitch():
    ds = Downsampler()
    src = sine48(1000.0, 1.0).astype(np.float32) / 32768
    frames = []
    for i in range(0, len(src), 960):
        frames += ds.push(src[i : i + 960])
    frames += ds.flush()
    assert all(len(f) == FRAME_BYTES for f in frames)
    out = np.frombuffer(b"".join(frames), dtype=np.int16)
    assert abs(len(out) - 24000) <= 480
    assert abs(dominant_freq(out[2400:-2400], 24000) - 1000.0) < 5
    # 18 kHz is above the new Nyquist: the anti-alias filter must remove it, not fold it to 6 kHz.
    ds2 = Downsampler()
    hi = sine48(18000.0, 0.5).astype(np.float32) / 32768
    out_hi = np.frombuffer(b"".join(ds2.push(hi) + ds2.flush()), dtype=np.int16)
    assert np.abs(out_hi[2400:-2400]).max() < 100


def encode_stereo(mono: np.ndarray, **kw) -> list[bytes]:
    enc = opus.Encoder(**kw)
    st = np.repeat(mono[:, None], 2, axis=1).astype(np.int16).tobytes()
    return [enc.encode(st[i : i + 3840], 960) for i in range(0, len(st) - 3839, 3840)]


def test_mono_decode_of_stereo_stream_is_the_downmix():
    src = sine48(440.0, 0.4)
    packets = encode_stereo(src)
    mono = OpusDecoder(1)
    stereo = OpusDecoder(2)
    a = np.concatenate([mono.decode(p) for p in packets]).astype(np.float64)
    b = np.concatenate([stereo.decode(p) for p in packets]).reshape(-1, 2).mean(axis=1)
    assert len(a) == len(src)
    assert np.corrcoef(a, b)[0, 1] > 0.99
    assert abs(dominant_freq(a, 48000) - 440.0) < 5


def test_fec_recovers_a_lost_silk_frame_better_than_plc():
    src = (sine48(300.0, 1.0, 6000).astype(np.int32) + sine48(1200.0, 1.0, 3000)).astype(np.int16)
    packets = encode_stereo(src, application="voip", bitrate=24, expected_packet_loss=0.3)
    assert packet_has_silk(packets[20])
    lost = 25
    ref = OpusDecoder(1)
    full = [ref.decode(p) for p in packets]
    fec_dec, plc_dec = OpusDecoder(1), OpusDecoder(1)
    for p in packets[:lost]:
        fec_dec.decode(p)
        plc_dec.decode(p)
    fec = fec_dec.decode_fec(packets[lost + 1])
    plc = plc_dec.conceal()
    assert fec is not None and plc is not None and len(fec) == len(plc) == FRAME_SAMPLES
    target = full[lost].astype(np.float64)
    assert np.abs(target).max() > 0.05  # the lost frame has signal to recover
    err_fec = np.mean((fec - target) ** 2)
    err_plc = np.mean((plc - target) ** 2)
    assert err_fec < err_plc


def test_downsampler_is_deterministic_and_clips():
    x = np.random.default_rng(0).uniform(-1.2, 1.2, 9600).astype(np.float32)
    runs = []
    for _ in range(2):
        ds = Downsampler()
        runs.append(b"".join(f for i in range(0, 9600, 960) for f in ds.push(x[i : i + 960])))
    assert runs[0] == runs[1]
    assert np.abs(np.frombuffer(runs[0], dtype=np.int16)).max() >= 32767


def test_corrupt_packet_is_rejected_not_raised():
    dec = OpusDecoder(1)
    assert dec.decode(b"\xff") is None  # code 3 TOC without frame count
    assert dec.conceal() is not None
