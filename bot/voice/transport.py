"""Transport decryption of Discord's rtpsize AEAD modes (pure, no I/O).

Layout (protocols.md §3): ``header (AAD) ‖ ciphertext+tag ‖ 4-byte big-endian nonce counter``; the
nonce is those 4 bytes followed by zeros. The plaintext starts with the extension body, then the
(DAVE-encrypted) Opus frame. XChaCha20 uses PyNaCl (libsodium); AES-256-GCM uses ``cryptography``
because PyNaCl 1.5 has no AES-GCM binding. discord.py 2.7.1 only negotiates XChaCha20, so the
``cryptography`` import is lazy: AES-GCM matters only for captures from other clients.
"""

from __future__ import annotations

from collections.abc import Callable

from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_decrypt
from nacl.exceptions import CryptoError

from bot.audio.outcomes import Outcome
from bot.voice.rtp import RtpHeader

XCHACHA20 = "aead_xchacha20_poly1305_rtpsize"
AES256_GCM = "aead_aes256_gcm_rtpsize"
SUPPORTED_MODES = (XCHACHA20, AES256_GCM)
_TAG = 16
_NONCE_SUFFIX = 4
_XCHACHA_PAD = bytes(20)
_GCM_PAD = bytes(8)


def _aesgcm_opener(key: bytes) -> Callable[[bytes, bytes, bytes], bytes]:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(key)

    def open_(ciphertext: bytes, aad: bytes, suffix: bytes) -> bytes:
        try:
            return aead.decrypt(suffix + _GCM_PAD, ciphertext, aad)
        except InvalidTag as exc:
            raise CryptoError("bad tag") from exc

    return open_


def _xchacha_opener(key: bytes) -> Callable[[bytes, bytes, bytes], bytes]:
    def open_(ciphertext: bytes, aad: bytes, suffix: bytes) -> bytes:
        return crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, aad, suffix + _XCHACHA_PAD, key)

    return open_


class TransportDecryptor:
    """Opens datagrams of one voice connection; ``secret_key`` is the op 4 list of ints or bytes."""

    __slots__ = ("_open", "mode")

    def __init__(self, mode: str, secret_key: bytes | list[int]) -> None:
        key = bytes(secret_key)
        if len(key) != 32:
            raise ValueError("secret_key must be 32 bytes")
        if mode == XCHACHA20:
            self._open = _xchacha_opener(key)
        elif mode == AES256_GCM:
            self._open = _aesgcm_opener(key)
        else:
            raise ValueError(f"unsupported transport mode {mode!r}")
        self.mode = mode

    def decrypt(self, data: bytes, header: RtpHeader) -> bytes | Outcome:
        """The Opus frame (still DAVE-encrypted if E2EE is on), or why there is none."""
        aad = header.aad_size
        if len(data) < aad + _TAG + _NONCE_SUFFIX:
            return Outcome.MALFORMED
        try:
            plain = self._open(data[aad:-_NONCE_SUFFIX], data[:aad], data[-_NONCE_SUFFIX:])
        except CryptoError:
            return Outcome.DECRYPT_FAILED
        end = len(plain)
        if header.padding:
            pad = plain[-1] if end else 0
            if pad == 0 or pad > end:
                return Outcome.MALFORMED
            end -= pad
        start = header.extension_size
        if start >= end:
            return Outcome.MALFORMED
        return plain[start:end] if start or end != len(plain) else plain
