"""Fuzz: 100,000+ malformed datagrams interleaved with a good stream (seeded, fast).

Asserts: nothing escapes ``feed``; every datagram lands in exactly one outcome counter; the good
speaker's audio is bit-identical to receiving the good stream alone; nothing hit INTERNAL_ERROR.
"""

import struct

import nacl.bindings
import numpy as np

from bot.audio.sink import CollectingSink
from bot.voice.receiver import VoiceReceiver
from tests.voice.conftest import speaking
from tests.voice.peers import SECRET_KEY, XCHACHA, DiscordPeer, to_stereo_bytes

N_BAD = 100_000
GOOD_SSRC, ATTACKER_SSRC = 4242, 666


def seal(header: bytes, plain: bytes, counter: int) -> bytes:
    suffix = struct.pack(">I", counter & 0xFFFFFFFF)
    return header + nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        plain, header, suffix + bytes(20), SECRET_KEY
    ) + suffix


def malformed(rng: np.random.Generator, good: list[bytes], n: int) -> tuple[list[bytes], dict[str, int]]:
    kinds = ["random", "truncated", "bad_tag", "absurd_ext", "corrupt_opus", "rtcp", "unmapped", "bad_pad"]
    weights = np.array([30, 15, 20, 10, 8, 5, 7, 5], dtype=float)
    choice = rng.choice(len(kinds), size=n, p=weights / weights.sum())
    out, made = [], dict.fromkeys(kinds, 0)
    for k in choice:
        kind = kinds[k]
        made[kind] += 1
        g = good[int(rng.integers(len(good)))]
        if kind == "random":
            out.append(rng.bytes(int(rng.integers(0, 300))))
        elif kind == "truncated":
            out.append(g[: int(rng.integers(0, len(g)))])
        elif kind == "bad_tag":
            b = bytearray(g)
            pos = int(rng.integers(0, len(b)))
            b[pos] ^= 1 << int(rng.integers(8))
            out.append(bytes(b))
        elif kind == "absurd_ext":
            words = int(rng.integers(64, 65536))  # longer than any body below: never valid
            cc = int(rng.integers(0, 3))
            header = struct.pack(">BBHII", 0x90 | cc, 0x78, int(rng.integers(65536)), 0, GOOD_SSRC)
            header += bytes(4 * cc) + struct.pack(">HH", 0xBEDE, words)
            body = rng.bytes(int(rng.integers(0, 200)))
            out.append(seal(header, body, int(rng.integers(2**32))) if rng.random() < 0.5 else header + body)
        elif kind == "corrupt_opus":  # authentic transport, garbage Opus, from another member
            header = struct.pack(">BBHII", 0x80, 0x78, int(rng.integers(65536)), 0, ATTACKER_SSRC)
            out.append(seal(header, rng.bytes(int(rng.integers(1, 400))), int(rng.integers(2**32))))
        elif kind == "rtcp":
            out.append(struct.pack(">BBH", 0x81, int(rng.integers(200, 205)), 7) + rng.bytes(28))
        elif kind == "unmapped":
            header = struct.pack(">BBHII", 0x80, 0x78, int(rng.integers(65536)), 0, int(rng.integers(10**6, 2**32)))
            out.append(seal(header, rng.bytes(40), int(rng.integers(2**32))))
        else:  # padding bit with an impossible pad count
            header = struct.pack(">BBHII", 0xA0, 0x78, int(rng.integers(65536)), 0, ATTACKER_SSRC)
            out.append(seal(header, rng.bytes(10) + b"\xff", int(rng.integers(2**32))))
    return out, made


def run(datagrams: list[bytes], duration: float) -> tuple[VoiceReceiver, CollectingSink]:
    """Feed ``datagrams`` evenly over ``duration`` seconds of receiver clock, ticking as live."""
    sink = CollectingSink()
    receiver = VoiceReceiver(sink, mode=XCHACHA, secret_key=SECRET_KEY)
    speaking(receiver, 1, GOOD_SSRC)
    speaking(receiver, 2, ATTACKER_SSRC)
    t, step = 0.0, duration / len(datagrams)
    for i, d in enumerate(datagrams):
        receiver.feed(d, t)
        t += step
        if i % 100 == 0:
            receiver.tick(t)
    receiver.flush()
    return receiver, sink


def test_fuzz_malformed_interleaved_with_good_stream(speech):
    rng = np.random.default_rng(20261125)
    peer = DiscordPeer(ssrc=GOOD_SSRC)
    good = peer.send_pcm(to_stereo_bytes(speech))
    bad, made = malformed(rng, good, N_BAD)
    assert len(bad) >= 100_000 and min(made.values()) > 1000
    # interleave: good packets keep their order, spread among the bad ones
    positions = np.sort(rng.choice(len(bad) + len(good), size=len(good), replace=False))
    mixed, gi, bi = [], 0, 0
    pos_set = set(positions.tolist())
    for i in range(len(bad) + len(good)):
        if i in pos_set:
            mixed.append(good[gi])
            gi += 1
        else:
            mixed.append(bad[bi])
            bi += 1
    duration = 0.02 * len(good)  # the good stream arrives in real time; the bad ones crowd around it
    receiver, sink = run(mixed, duration)
    c = receiver.counters()
    outcomes = c["outcomes"]
    assert c["received"] == len(mixed) and c["pending"] == 0
    assert sum(outcomes.values()) == len(mixed)
    assert outcomes["internal_error"] == 0
    for name in ("not_rtp", "rtcp", "malformed", "decrypt_failed", "unmapped_dropped"):
        assert outcomes[name] > 0, name
    print(c)
    clean, clean_sink = run(good, duration)
    assert clean.counters()["outcomes"]["decoded"] == len(good)
    assert sink.pcm(1) == clean_sink.pcm(1)  # the good stream came out intact, bit for bit
