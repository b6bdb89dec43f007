"""The sandbox's UDP media relay: IP discovery, then per-receiver re-encryption of every member's RTP.

Like Discord's SFU, it never sees audio: it removes the sender's transport encryption and applies each
receiver's own (key, mode, nonce counter), adding a one-word `0xBEDE` header extension. The Opus inside
stays DAVE-encrypted end to end. Layout of the `*_rtpsize` modes: docs/protocols.md §3.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import Counter
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_decrypt, crypto_aead_xchacha20poly1305_ietf_encrypt

log = logging.getLogger(__name__)

AES_GCM = "aead_aes256_gcm_rtpsize"
XCHACHA = "aead_xchacha20_poly1305_rtpsize"
SUPPORTED_MODES = (AES_GCM, XCHACHA)

DISCOVERY_LEN = 74
KEEPALIVE_LEN = 8
OPUS_PAYLOAD_TYPE = 0x78
# The header extension the relay adds: one-byte-header profile, one word; the body is all padding (ID 0).
EXTENSION_PREAMBLE = b"\xbe\xde\x00\x01"
EXTENSION_BODY = b"\x00\x00\x00\x00"

Room = tuple[int, int]  # (guild_id, channel_id)
Address = tuple[str, int]


class TransportError(ValueError):
    """A packet that does not parse or authenticate."""


def _nonce(mode: str, counter_bytes: bytes) -> bytes:
    return counter_bytes + b"\x00" * ((12 if mode == AES_GCM else 24) - 4)


def seal(mode: str, key: bytes, aad: bytes, plaintext: bytes, counter: int) -> bytes:
    """rtpsize: `aad ‖ AEAD(plaintext) ‖ u32 counter`, nonce = counter ‖ zeros."""
    counter_bytes = struct.pack(">I", counter & 0xFFFFFFFF)
    nonce = _nonce(mode, counter_bytes)
    if mode == AES_GCM:
        sealed = AESGCM(key).encrypt(nonce, plaintext, aad)
    elif mode == XCHACHA:
        sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, nonce, key)
    else:
        raise TransportError(f"unknown mode {mode}")
    return aad + sealed + counter_bytes


def rtp_header_length(packet: bytes) -> tuple[int, int]:
    """(bytes of RTP header incl. the extension preamble, extension body words): the AAD of rtpsize modes."""
    if len(packet) < 12 or packet[0] >> 6 != 2:
        raise TransportError("not RTP v2")
    length = 12 + 4 * (packet[0] & 0x0F)
    words = 0
    if packet[0] & 0x10:
        if len(packet) < length + 4:
            raise TransportError("truncated extension preamble")
        words = struct.unpack_from(">H", packet, length + 2)[0]
        length += 4
    return length, words


def open_packet(mode: str, key: bytes, packet: bytes) -> tuple[bytes, bytes]:
    """Decrypt an rtpsize packet: returns (RTP header without extension, payload after the extension body)."""
    header_len, words = rtp_header_length(packet)
    if len(packet) < header_len + 16 + 4:
        raise TransportError("packet too short")
    aad, sealed, counter_bytes = packet[:header_len], packet[header_len:-4], packet[-4:]
    nonce = _nonce(mode, counter_bytes)
    try:
        if mode == AES_GCM:
            plaintext = AESGCM(key).decrypt(nonce, sealed, aad)
        elif mode == XCHACHA:
            plaintext = crypto_aead_xchacha20poly1305_ietf_decrypt(sealed, aad, nonce, key)
        else:
            raise TransportError(f"unknown mode {mode}")
    except TransportError:
        raise
    except Exception as exc:  # InvalidTag (cryptography) / CryptoError (nacl)
        raise TransportError(f"authentication failed: {exc.__class__.__name__}") from exc
    if len(plaintext) < 4 * words:
        raise TransportError("extension longer than payload")
    bare = bytearray(packet[:12])
    bare[0] &= 0xE0  # drop X and CSRC count: the relay forwards with no CSRCs
    return bytes(bare), plaintext[4 * words :]


def discovery_response(ssrc: int, address: Address) -> bytes:
    """74-byte IP discovery answer: type 2, length 70, SSRC, NUL-padded ASCII address, u16 port."""
    host = address[0].encode("ascii")[:63]
    return struct.pack(">HHI", 2, 70, ssrc) + host.ljust(64, b"\x00") + struct.pack(">H", address[1])


@dataclass
class SfuMember:
    user_id: int
    ssrc: int
    room: Room
    address: Address | None = None
    mode: str | None = None
    key: bytes | None = None
    nonce: int = 0
    speak: bool = True
    stats: Counter[str] = field(default_factory=Counter)


class Sfu(asyncio.DatagramProtocol):
    """Relays each known sender's RTP to the other members of its room who have a transport key."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        # An account has one voice connection per guild, and may have several guilds: members are keyed by both.
        self._members: dict[tuple[int, int], SfuMember] = {}  # (guild, user) → member
        self._by_ssrc: dict[int, SfuMember] = {}
        self.stats: Counter[str] = Counter()
        self._stats_of_gone: dict[int, Counter[str]] = {}  # user → counters of connections that ended

    async def start(self, host: str = "127.0.0.1") -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(host, 0))

    @property
    def port(self) -> int:
        if self.transport is None:
            raise RuntimeError("SFU not started")
        return self.transport.get_extra_info("sockname")[1]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # --- membership, driven by the voice gateway ---

    def join(self, user_id: int, ssrc: int, room: Room, *, speak: bool = True) -> None:
        self.leave(user_id, room[0])
        member = SfuMember(user_id, ssrc, room, speak=speak)
        self._members[(room[0], user_id)] = member
        self._by_ssrc[ssrc] = member

    def set_session(self, user_id: int, guild_id: int, mode: str, key: bytes, address: Address | None = None) -> None:
        """After SELECT_PROTOCOL: the member may now receive; `address` is what it claimed (discovery wins)."""
        member = self._members[(guild_id, user_id)]
        member.mode, member.key = mode, key
        if member.address is None and address is not None:
            member.address = address

    def leave(self, user_id: int, guild_id: int) -> None:
        member = self._members.pop((guild_id, user_id), None)
        if member is not None:
            self._by_ssrc.pop(member.ssrc, None)
            self._stats_of_gone.setdefault(user_id, Counter()).update(member.stats)

    def counters(self, user_id: int) -> dict[str, int]:
        """One account's totals over all its connections, past and present."""
        stats = Counter(self._stats_of_gone.get(user_id, Counter()))
        for (_, uid), member in self._members.items():
            if uid == user_id:
                stats.update(member.stats)
        return {name: stats[name] for name in ("packets_in", "packets_out", "bytes_in", "dropped", "not_permitted")}

    # --- datagrams ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport (not always a subclass)

    def error_received(self, exc: Exception) -> None:
        self.stats["socket_errors"] += 1
        log.debug("SFU socket error: %s", exc)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if len(data) == KEEPALIVE_LEN:
            self.stats["keepalives"] += 1
            return
        if len(data) == DISCOVERY_LEN and data[:4] == b"\x00\x01\x00\x46":
            self._discover(data, addr)
            return
        if len(data) < 12:
            self.stats["unparseable"] += 1
            return
        if 200 <= data[1] <= 204:  # RTCP sender/receiver reports: not relayed
            self.stats["rtcp"] += 1
            return
        sender = self._by_ssrc.get(struct.unpack_from(">I", data, 8)[0])
        if sender is None:
            self.stats["unknown_ssrc"] += 1
            return
        if sender.address is None:
            sender.address = addr
        sender.stats["packets_in"] += 1
        sender.stats["bytes_in"] += len(data)
        if sender.address != addr or sender.key is None or sender.mode is None:
            sender.stats["dropped"] += 1
            return
        if not sender.speak:
            sender.stats["not_permitted"] += 1
            return
        try:
            header, payload = open_packet(sender.mode, sender.key, data)
        except TransportError as exc:
            sender.stats["dropped"] += 1
            log.debug("dropped packet from %s: %s", sender.user_id, exc)
            return
        self._relay(sender, header, payload)

    def _discover(self, data: bytes, addr: Address) -> None:
        ssrc = struct.unpack_from(">I", data, 4)[0]
        member = self._by_ssrc.get(ssrc)
        if member is None:
            self.stats["unknown_discovery"] += 1
            return
        member.address = addr
        assert self.transport is not None
        self.transport.sendto(discovery_response(ssrc, addr), addr)

    def _relay(self, sender: SfuMember, header: bytes, payload: bytes) -> None:
        assert self.transport is not None
        out_header = bytearray(header)
        out_header[0] = (out_header[0] & 0xE0) | 0x10  # V=2, P kept, X=1, no CSRCs
        aad = bytes(out_header) + EXTENSION_PREAMBLE
        plaintext = EXTENSION_BODY + payload
        for receiver in list(self._members.values()):
            if receiver is sender or receiver.room != sender.room:
                continue
            if receiver.key is None or receiver.mode is None or receiver.address is None:
                continue
            packet = seal(receiver.mode, receiver.key, aad, plaintext, receiver.nonce)
            receiver.nonce = (receiver.nonce + 1) & 0xFFFFFFFF
            self.transport.sendto(packet, receiver.address)
            receiver.stats["packets_out"] += 1
