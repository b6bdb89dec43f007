"""Where every received datagram ends up: one outcome per datagram, counted exactly once.

Packets that are still waiting (held for an unknown SSRC, or in a jitter buffer) are *pending*;
``received == sum(outcomes) + pending`` holds at all times, and ``pending`` is 0 after a flush.
"""

from __future__ import annotations

from enum import IntEnum


class Outcome(IntEnum):
    """Final fate of one datagram."""

    DECODED = 0
    """Opus frame decoded into speech."""
    SILENCE = 1
    """Discord's silence frame (F8 FF FE): ends the speaker's stream."""
    NOT_RTP = 2
    """Too short or not RTP version 2 (keepalives, IP discovery replies, garbage)."""
    RTCP = 3
    """RTCP (payload types 200-204): ignored."""
    OTHER_PAYLOAD = 4
    """RTP with a payload type other than Opus (0x78): ignored."""
    MALFORMED = 5
    """RTP header or decrypted layout inconsistent (lengths, padding, extension)."""
    NO_KEY = 6
    """No secret key yet, or a transport mode this build cannot decrypt."""
    DECRYPT_FAILED = 7
    """Transport AEAD authentication failed."""
    VIDEO = 8
    """SSRC belongs to a video stream."""
    UNMAPPED_DROPPED = 9
    """SSRC never mapped to a member in time (hold bound or age exceeded)."""
    DAVE_FAILED = 10
    """DAVE (E2EE) decryption failed or was impossible: dropped, the decoder conceals it."""
    DUPLICATE = 11
    """Same sequence number already buffered or played."""
    LATE = 12
    """Arrived after its slot was concealed or the stream moved on."""
    OPUS_ERROR = 13
    """libopus rejected the frame: dropped, concealed."""
    SPEAKER_LEFT = 14
    """Still buffered when the member left (op 13) or the receiver was closed without flushing."""
    INTERNAL_ERROR = 15
    """A bug caught at the speaker boundary; the speaker's state was reset."""


OUTCOME_NAMES: tuple[str, ...] = tuple(o.name.lower() for o in Outcome)
