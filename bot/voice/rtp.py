"""RTP header parsing for Discord voice datagrams (pure, no I/O).

Discord's rtpsize AEAD modes authenticate the RTP header *including* the 4-byte extension preamble
(``0xBEDE`` + length in 32-bit words) but encrypt the extension body, so the parser reports where the
associated data ends and how many plaintext bytes of extension to skip after decryption.
"""

from __future__ import annotations

from typing import NamedTuple

from bot.audio.outcomes import Outcome

RTP_VERSION = 2
OPUS_PAYLOAD_TYPE = 0x78
FIXED_HEADER = 12
EXTENSION_PROFILE_ONE_BYTE = 0xBEDE
# RTCP packet types 200-204 share the second byte with RTP's marker+payload type (RFC 5761).
_RTCP_TYPES = range(200, 205)


class RtpHeader(NamedTuple):
    """What the receive path needs from one RTP header."""

    sequence: int
    timestamp: int
    ssrc: int
    aad_size: int
    """Bytes of header that are AEAD associated data (fixed header, CSRCs, extension preamble)."""
    extension_size: int
    """Bytes of (encrypted) extension body to skip at the start of the plaintext."""
    padding: bool


def parse_rtp(data: bytes) -> RtpHeader | Outcome:
    """Parse ``data`` as an RTP/Opus packet, or return the outcome explaining why it is not one."""
    size = len(data)
    if size < FIXED_HEADER:
        return Outcome.NOT_RTP
    first = data[0]
    if first >> 6 != RTP_VERSION:
        return Outcome.NOT_RTP
    second = data[1]
    if second in _RTCP_TYPES:
        return Outcome.RTCP
    if second & 0x7F != OPUS_PAYLOAD_TYPE:
        return Outcome.OTHER_PAYLOAD
    aad = FIXED_HEADER + 4 * (first & 0x0F)
    ext = 0
    if first & 0x10:
        if size < aad + 4:
            return Outcome.MALFORMED
        ext = 4 * int.from_bytes(data[aad + 2 : aad + 4], "big")
        aad += 4
    if size < aad:
        return Outcome.MALFORMED
    return RtpHeader(
        int.from_bytes(data[2:4], "big"),
        int.from_bytes(data[4:8], "big"),
        int.from_bytes(data[8:12], "big"),
        aad,
        ext,
        bool(first & 0x20),
    )
