import numpy as np
import pytest

from bot.audio.sink import CollectingSink
from bot.voice.config import VoiceConfig
from bot.voice.receiver import VoiceReceiver
from tests.voice.peers import SECRET_KEY, XCHACHA, espeak_speech

SPEAKING = 5


@pytest.fixture(scope="session")
def speech() -> np.ndarray:
    return espeak_speech()


@pytest.fixture
def sink() -> CollectingSink:
    return CollectingSink()


@pytest.fixture
def make_receiver(sink):
    def make(config: VoiceConfig | None = None, **kw) -> VoiceReceiver:
        return VoiceReceiver(sink, config, mode=XCHACHA, secret_key=SECRET_KEY, **kw)

    return make


def speaking(receiver: VoiceReceiver, user_id: int, ssrc: int, t: float = 0.0) -> None:
    receiver.on_gateway(SPEAKING, {"user_id": str(user_id), "ssrc": ssrc, "speaking": 1}, t)


def feed_all(receiver: VoiceReceiver, datagrams, t0: float = 0.0, step: float = 0.02) -> float:
    t = t0
    for d in datagrams:
        receiver.feed(d, t)
        t += step
    return t


def assert_accounted(receiver: VoiceReceiver) -> dict:
    c = receiver.counters()
    assert c["received"] == sum(c["outcomes"].values()) + c["pending"]
    return c


def receive_all(receiver: VoiceReceiver, user_id: int, ssrc: int, datagrams) -> dict:
    """Map `ssrc` to `user_id`, deliver every datagram 20 ms apart, flush; the checked counters."""
    speaking(receiver, user_id, ssrc)
    feed_all(receiver, datagrams)
    receiver.flush()
    return assert_accounted(receiver)
