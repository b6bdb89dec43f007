"""RTP parsing and rtpsize transport decryption against discord.py's own sender code."""

import struct

import nacl.bindings
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bot.audio.outcomes import Outcome
from bot.voice.rtp import RtpHeader, parse_rtp
from bot.voice.transport import AES256_GCM, XCHACHA20, TransportDecryptor
from tests.voice.peers import SECRET_KEY, DiscordPeer

OPUS = b"\xfc\x01\x02\x03\x04\x05\x06"


def test_discord_py_datagram_round_trips():
    peer = DiscordPeer(ssrc=0xDEADBEEF, sequence=41, timestamp=960 * 7)
    datagram = peer.send_opus(OPUS)
    header = parse_rtp(datagram)
    assert header == RtpHeader(42, 960 * 7, 0xDEADBEEF, 12, 0, False)
    assert TransportDecryptor(XCHACHA20, list(SECRET_KEY)).decrypt(datagram, header) == OPUS


def test_forwarded_datagram_with_extension_skips_encrypted_extension_body():
    peer = DiscordPeer(ssrc=77)
    (datagram,) = peer.send_with_extension(bytes(3840), ext_words=2)
    header = parse_rtp(datagram)
    assert isinstance(header, RtpHeader)
    assert header.aad_size == 16 and header.extension_size == 8
    frame = TransportDecryptor(XCHACHA20, SECRET_KEY).decrypt(datagram, header)
    assert isinstance(frame, bytes) and frame[0] == peer.vc.encoder.encode(bytes(3840), 960)[0]


def rtp(first=0x80, second=0x78, seq=1, ts=0, ssrc=5, extra=b""):
    return struct.pack(">BBHII", first, second, seq, ts, ssrc) + extra


@pytest.mark.parametrize(
    ("data", "outcome"),
    [
        (b"", Outcome.NOT_RTP),
        (b"\x80\x78\x00", Outcome.NOT_RTP),
        (rtp(first=0x40), Outcome.NOT_RTP),  # version 1
        (b"\x00\x02" + bytes(72), Outcome.NOT_RTP),  # IP discovery reply
        (rtp(second=0xC9), Outcome.RTCP),  # receiver report
        (rtp(second=0xC8), Outcome.RTCP),
        (rtp(second=0x65), Outcome.OTHER_PAYLOAD),  # video
        (rtp(first=0x90), Outcome.MALFORMED),  # X bit, no preamble
        (rtp(first=0x83, extra=bytes(8)), Outcome.MALFORMED),  # 3 CSRCs announced, 2 present
    ],
)
def test_parse_rejects(data, outcome):
    assert parse_rtp(data) is outcome


def test_parse_csrcs_and_marker():
    header = parse_rtp(rtp(first=0x92, second=0xF8, extra=bytes(8) + b"\xbe\xde\x00\x03"))
    assert isinstance(header, RtpHeader)
    assert header.aad_size == 12 + 8 + 4 and header.extension_size == 12


def seal_xchacha(header: bytes, plain: bytes, counter: int = 3) -> bytes:
    suffix = struct.pack(">I", counter)
    return header + nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        plain, header, suffix + bytes(20), SECRET_KEY
    ) + suffix


def test_aes256_gcm_mode():
    header = rtp(seq=9)
    suffix = struct.pack(">I", 12)
    datagram = header + AESGCM(SECRET_KEY).encrypt(suffix + bytes(8), OPUS, header) + suffix
    parsed = parse_rtp(datagram)
    assert TransportDecryptor(AES256_GCM, SECRET_KEY).decrypt(datagram, parsed) == OPUS
    tampered = datagram[:-5] + bytes([datagram[-5] ^ 1]) + datagram[-4:]
    assert TransportDecryptor(AES256_GCM, SECRET_KEY).decrypt(tampered, parsed) is Outcome.DECRYPT_FAILED


def test_bad_tag_wrong_key_header_tamper_and_padding():
    dec = TransportDecryptor(XCHACHA20, SECRET_KEY)
    datagram = seal_xchacha(rtp(), OPUS)
    assert dec.decrypt(datagram, parse_rtp(datagram)) == OPUS
    flipped = bytearray(datagram)
    flipped[20] ^= 0x40
    assert dec.decrypt(bytes(flipped), parse_rtp(bytes(flipped))) is Outcome.DECRYPT_FAILED
    tampered_header = rtp(seq=2) + datagram[12:]  # header is authenticated
    assert dec.decrypt(tampered_header, parse_rtp(tampered_header)) is Outcome.DECRYPT_FAILED
    other = TransportDecryptor(XCHACHA20, bytes(32))
    assert other.decrypt(datagram, parse_rtp(datagram)) is Outcome.DECRYPT_FAILED
    padded = seal_xchacha(rtp(first=0xA0), OPUS + b"\x00\x00\x03")
    assert dec.decrypt(padded, parse_rtp(padded)) == OPUS
    bad_pad = seal_xchacha(rtp(first=0xA0), OPUS + b"\x40")
    assert dec.decrypt(bad_pad, parse_rtp(bad_pad)) is Outcome.MALFORMED
    huge_ext = seal_xchacha(rtp(first=0x90, extra=b"\xbe\xde\xff\xff"), OPUS)
    assert dec.decrypt(huge_ext, parse_rtp(huge_ext)) is Outcome.MALFORMED
    assert dec.decrypt(datagram[:30], parse_rtp(datagram[:30])) is Outcome.MALFORMED


def test_unsupported_mode_is_refused():
    with pytest.raises(ValueError):
        TransportDecryptor("xsalsa20_poly1305", SECRET_KEY)
    with pytest.raises(ValueError):
        TransportDecryptor(XCHACHA20, b"short")
