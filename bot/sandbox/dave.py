"""The voice gateway's half of DAVE: an MLS external sender and delivery service, with no I/O.

Discord's voice server never joins the MLS group. It only (a) publishes an external-sender credential
(op 25), (b) signs external Add/Remove proposals (op 27) when members join or leave, (c) splits each
op 28 `commit ‖ welcome` so the commit goes to members (op 29) and the welcome to joiners (op 30), and
(d) keeps enough of the group's state (epoch, who sits at which leaf) to sign the next proposals. That is
all this module does; see docs/protocols.md §3-4 and RFC 9420 for the wire formats.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

# Discord's voice gateway opcodes for DAVE (JSON unless marked binary).
PREPARE_TRANSITION = 21
EXECUTE_TRANSITION = 22
TRANSITION_READY = 23
PREPARE_EPOCH = 24
MLS_EXTERNAL_SENDER = 25  # binary, server → client
MLS_KEY_PACKAGE = 26  # binary, client → server
MLS_PROPOSALS = 27  # binary, server → client
MLS_COMMIT_WELCOME = 28  # binary, client → server
MLS_ANNOUNCE_COMMIT_TRANSITION = 29  # binary, server → client
MLS_WELCOME = 30  # binary, server → client
MLS_INVALID_COMMIT_WELCOME = 31

PROPOSALS_APPEND = 0
PROPOSALS_REVOKE = 1

MLS_VERSION = 1
WIRE_PUBLIC_MESSAGE = 1
SENDER_MEMBER = 1
SENDER_EXTERNAL = 2
SENDER_NEW_MEMBER_PROPOSAL = 3
SENDER_NEW_MEMBER_COMMIT = 4
CONTENT_APPLICATION = 1
CONTENT_PROPOSAL = 2
CONTENT_COMMIT = 3
PROPOSAL_ADD = 1
PROPOSAL_UPDATE = 2
PROPOSAL_REMOVE = 3
PROPOSAL_EXTERNAL_INIT = 6
PROPOSAL_GROUP_CONTEXT_EXTENSIONS = 7
CREDENTIAL_BASIC = 1
CREDENTIAL_X509 = 2


class MlsDecodeError(ValueError):
    """Bytes that are not the MLS structure we expected (truncated, unknown variant)."""


# --- MLS variable-length vectors (RFC 9420 §2.1.2) -------------------------------------------------


def encode_varint(n: int) -> bytes:
    """MLS varint: 1 byte below 64, 2 bytes `0x4000|n` below 16384, else 4 bytes `0x80000000|n`."""
    if n < 0 or n >= 1 << 30:
        raise ValueError(f"varint out of range: {n}")
    if n < 64:
        return bytes([n])
    if n < 16384:
        return struct.pack(">H", 0x4000 | n)
    return struct.pack(">I", 0x80000000 | n)


def vec(data: bytes) -> bytes:
    """`opaque data<V>`: the bytes prefixed by their length as an MLS varint."""
    return encode_varint(len(data)) + data


class Reader:
    """A cursor over TLS-presentation bytes; every read raises MlsDecodeError past the end."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = bytes(data)
        self.pos = pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise MlsDecodeError(f"need {n} bytes at {self.pos}, have {len(self.data) - self.pos}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack(">H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack(">Q", self.take(8))[0]

    def varint(self) -> int:
        first = self.u8()
        prefix = first >> 6
        if prefix == 0:
            return first
        if prefix == 1:
            return ((first & 0x3F) << 8) | self.u8()
        if prefix == 2:
            rest = self.take(3)
            return ((first & 0x3F) << 24) | int.from_bytes(rest, "big")
        raise MlsDecodeError("invalid varint prefix 0b11")

    def vec(self) -> bytes:
        return self.take(self.varint())

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos


def decode_varint(data: bytes, pos: int = 0) -> tuple[int, int]:
    """Return (value, position after it)."""
    reader = Reader(data, pos)
    value = reader.varint()
    return value, reader.pos


def split_vec_items(data: bytes, parse_one) -> list[bytes]:  # type: ignore[no-untyped-def]
    """Split concatenated structures by parsing each with `parse_one(reader)`; returns each item's bytes."""
    reader = Reader(data)
    items = []
    while reader.remaining:
        start = reader.pos
        parse_one(reader)
        items.append(reader.data[start : reader.pos])
    return items


# --- binary voice-gateway frames -----------------------------------------------------------------


def encode_server_frame(seq: int, op: int, payload: bytes) -> bytes:
    """Server → client binary frame: `u16 seq ‖ u8 op ‖ payload`."""
    return struct.pack(">HB", seq & 0xFFFF, op) + payload


def decode_server_frame(frame: bytes) -> tuple[int, int, bytes]:
    if len(frame) < 3:
        raise MlsDecodeError("server frame shorter than 3 bytes")
    seq, op = struct.unpack_from(">HB", frame)
    return seq, op, bytes(frame[3:])


def encode_client_frame(op: int, payload: bytes) -> bytes:
    """Client → server binary frame: `u8 op ‖ payload`."""
    return bytes([op]) + payload


def decode_client_frame(frame: bytes) -> tuple[int, bytes]:
    if len(frame) < 1:
        raise MlsDecodeError("empty client frame")
    return frame[0], bytes(frame[1:])


def transition_payload(transition_id: int, body: bytes) -> bytes:
    """op 29 / op 30 payload: `u16 transition_id ‖ commit|welcome`."""
    return struct.pack(">H", transition_id) + body


# --- MLS structure parsing (only what the delivery service needs) ---------------------------------


def _skip_credential(r: Reader) -> None:
    kind = r.u16()
    if kind in (CREDENTIAL_BASIC, CREDENTIAL_X509):
        r.vec()  # basic: identity<V>; x509: certificates<V> (a vector of vectors)
    else:
        raise MlsDecodeError(f"unknown credential type {kind}")


def _skip_leaf_node(r: Reader) -> None:
    r.vec()  # encryption_key
    r.vec()  # signature_key
    _skip_credential(r)
    for _ in range(5):  # capabilities: versions, cipher_suites, extensions, proposals, credentials
        r.vec()
    source = r.u8()
    if source == 1:  # key_package: lifetime
        r.u64()
        r.u64()
    elif source == 2:  # update
        pass
    elif source == 3:  # commit: parent_hash
        r.vec()
    else:
        raise MlsDecodeError(f"unknown leaf node source {source}")
    r.vec()  # extensions
    r.vec()  # signature


def skip_key_package(r: Reader) -> None:
    r.u16()  # version
    r.u16()  # cipher suite
    r.vec()  # init_key
    _skip_leaf_node(r)
    r.vec()  # extensions
    r.vec()  # signature


def key_package_identity(key_package: bytes) -> bytes:
    """The basic credential identity in a KeyPackage's leaf (DAVE: the user id, 8 bytes big-endian)."""
    r = Reader(key_package)
    r.u16()
    r.u16()
    r.vec()
    r.vec()
    r.vec()
    kind = r.u16()
    if kind != CREDENTIAL_BASIC:
        raise MlsDecodeError(f"credential type {kind} is not basic")
    return r.vec()


@dataclass(frozen=True)
class InlineProposal:
    kind: int
    body: bytes  # the proposal body after its u16 type
    removed_leaf: int | None = None


def _read_proposal(r: Reader) -> InlineProposal:
    kind = r.u16()
    start = r.pos
    removed = None
    if kind == PROPOSAL_ADD:
        skip_key_package(r)
    elif kind == PROPOSAL_UPDATE:
        _skip_leaf_node(r)
    elif kind == PROPOSAL_REMOVE:
        removed = r.u32()
    elif kind in (PROPOSAL_EXTERNAL_INIT, PROPOSAL_GROUP_CONTEXT_EXTENSIONS):
        r.vec()
    else:
        raise MlsDecodeError(f"unsupported inline proposal type {kind}")
    return InlineProposal(kind, r.data[start : r.pos], removed)


@dataclass(frozen=True)
class CommitInfo:
    """What the delivery service learns from a commit MLSMessage."""

    group_id: bytes
    epoch: int
    sender_type: int
    sender_index: int
    proposal_refs: tuple[bytes, ...]
    inline: tuple[InlineProposal, ...]
    has_path: bool
    length: int  # bytes the MLSMessage occupies (op 28 carries a welcome after it)


def parse_commit(data: bytes) -> CommitInfo:
    """Parse a PublicMessage commit from the start of `data`; trailing bytes (the welcome) are left alone."""
    r = Reader(data)
    if r.u16() != MLS_VERSION:
        raise MlsDecodeError("not MLS 1.0")
    if r.u16() != WIRE_PUBLIC_MESSAGE:
        raise MlsDecodeError("commit is not a PublicMessage")
    group_id = r.vec()
    epoch = r.u64()
    sender_type = r.u8()
    sender_index = 0
    if sender_type in (SENDER_MEMBER, SENDER_EXTERNAL):
        sender_index = r.u32()
    elif sender_type not in (SENDER_NEW_MEMBER_PROPOSAL, SENDER_NEW_MEMBER_COMMIT):
        raise MlsDecodeError(f"unknown sender type {sender_type}")
    r.vec()  # authenticated_data
    if r.u8() != CONTENT_COMMIT:
        raise MlsDecodeError("content is not a commit")
    proposals = Reader(r.vec())
    refs: list[bytes] = []
    inline: list[InlineProposal] = []
    while proposals.remaining:
        kind = proposals.u8()
        if kind == 1:
            inline.append(_read_proposal(proposals))
        elif kind == 2:
            refs.append(proposals.vec())
        else:
            raise MlsDecodeError(f"unknown ProposalOrRef type {kind}")
    has_path = r.u8() == 1
    if has_path:
        _skip_leaf_node(r)
        r.vec()  # UpdatePathNode nodes<V>
    r.vec()  # signature
    r.vec()  # confirmation_tag (commits always carry one)
    if sender_type == SENDER_MEMBER:
        r.vec()  # membership_tag
    return CommitInfo(group_id, epoch, sender_type, sender_index, tuple(refs), tuple(inline), has_path, r.pos)


def split_commit_welcome(data: bytes) -> tuple[bytes, bytes | None]:
    """Split an op 28 payload `commit ‖ welcome?` by parsing the commit's length (the welcome is bare)."""
    info = parse_commit(data)
    commit, rest = bytes(data[: info.length]), bytes(data[info.length :])
    return commit, (rest or None)


# --- the external sender ---------------------------------------------------------------------------


def _sign_with_label(key: ec.EllipticCurvePrivateKey, label: str, content: bytes) -> bytes:
    """RFC 9420 SignWithLabel with ECDSA P-256/SHA-256 (cipher suite 2): DER signature."""
    sign_content = vec(b"MLS 1.0 " + label.encode()) + vec(content)
    return key.sign(sign_content, ec.ECDSA(hashes.SHA256()))


def ref_hash(label: str, value: bytes) -> bytes:
    """RFC 9420 RefHash with SHA-256."""
    return hashlib.sha256(vec(label.encode()) + vec(value)).digest()


@dataclass(frozen=True)
class SignedProposal:
    message: bytes  # the MLSMessage sent in op 27
    ref: bytes  # its ProposalRef, how a commit names it


class ExternalSender:
    """The voice gateway's MLS identity: one P-256 key, announced to clients in op 25."""

    def __init__(
        self, identity: bytes = b"parley-sandbox-voice", key: ec.EllipticCurvePrivateKey | None = None
    ) -> None:
        self.key = key or ec.generate_private_key(ec.SECP256R1())
        self.identity = identity
        self.public_key = self.key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)

    def package(self) -> bytes:
        """op 25 payload: `vec(public key) ‖ u16 credential_type = basic ‖ vec(identity)`."""
        return vec(self.public_key) + struct.pack(">H", CREDENTIAL_BASIC) + vec(self.identity)

    def _proposal(self, group_id: bytes, epoch: int, body: bytes) -> SignedProposal:
        content = (
            vec(group_id) + struct.pack(">QBI", epoch, SENDER_EXTERNAL, 0) + vec(b"") + bytes([CONTENT_PROPOSAL]) + body
        )
        tbs = struct.pack(">HH", MLS_VERSION, WIRE_PUBLIC_MESSAGE) + content
        signature = _sign_with_label(self.key, "FramedContentTBS", tbs)
        authenticated = struct.pack(">H", WIRE_PUBLIC_MESSAGE) + content + vec(signature)
        message = struct.pack(">H", MLS_VERSION) + authenticated
        return SignedProposal(message, ref_hash("MLS 1.0 Proposal Reference", authenticated))

    def add(self, group_id: bytes, epoch: int, key_package: bytes) -> SignedProposal:
        return self._proposal(group_id, epoch, struct.pack(">H", PROPOSAL_ADD) + key_package)

    def remove(self, group_id: bytes, epoch: int, leaf_index: int) -> SignedProposal:
        return self._proposal(group_id, epoch, struct.pack(">HI", PROPOSAL_REMOVE, leaf_index))


def group_id_for(channel_id: int) -> bytes:
    """DAVE's MLS group id: the channel id as 8 bytes big-endian."""
    return struct.pack(">Q", channel_id)


# --- group bookkeeping -------------------------------------------------------------------------------


@dataclass
class PendingChange:
    kind: int  # PROPOSAL_ADD or PROPOSAL_REMOVE
    user_id: int
    leaf: int | None = None  # for removes


@dataclass(frozen=True)
class CommitOutcome:
    """Who a commit added and removed, in the group's terms; epoch is the new epoch."""

    epoch: int
    added: tuple[int, ...]
    removed: tuple[int, ...]


class DaveGroup:
    """One channel's MLS group as the delivery service sees it: epoch, leaves, proposals in flight.

    Leaves follow RFC 9420: a commit applies its Removes (blanking leaves) then its Adds, each Add taking the
    leftmost blank leaf or extending the tree. The founder (first member, who creates the group alone from
    op 25) sits at leaf 0 at epoch 0.
    """

    def __init__(self, channel_id: int, sender: ExternalSender) -> None:
        self.channel_id = channel_id
        self.group_id = group_id_for(channel_id)
        self.sender = sender
        self.epoch = 0
        self.leaves: list[int | None] = []
        self.in_flight: dict[bytes, PendingChange] = {}

    @property
    def members(self) -> list[int]:
        return [u for u in self.leaves if u is not None]

    def leaf_of(self, user_id: int) -> int | None:
        try:
            return self.leaves.index(user_id)
        except ValueError:
            return None

    def found(self, user_id: int) -> None:
        """Start the group over with `user_id` alone at leaf 0, epoch 0 (its own pending group)."""
        self.epoch = 0
        self.leaves = [user_id]
        self.in_flight.clear()

    def reset(self) -> None:
        self.epoch = 0
        self.leaves = []
        self.in_flight.clear()

    def propose(self, adds: Sequence[tuple[int, bytes]], removes: Iterable[int]) -> bytes:
        """op 27 payload (`u8 append ‖ vec(proposals)`) removing then adding; remembers refs for the commit."""
        self.in_flight.clear()
        messages: list[bytes] = []
        for user_id in removes:
            leaf = self.leaf_of(user_id)
            if leaf is None:
                continue
            signed = self.sender.remove(self.group_id, self.epoch, leaf)
            self.in_flight[signed.ref] = PendingChange(PROPOSAL_REMOVE, user_id, leaf)
            messages.append(signed.message)
        for user_id, key_package in adds:
            signed = self.sender.add(self.group_id, self.epoch, key_package)
            self.in_flight[signed.ref] = PendingChange(PROPOSAL_ADD, user_id)
            messages.append(signed.message)
        return bytes([PROPOSALS_APPEND]) + vec(b"".join(messages))

    def revoke_payload(self) -> bytes:
        """op 27 revoke payload for the proposals in flight (`u8 1 ‖ vec(refs)`)."""
        return bytes([PROPOSALS_REVOKE]) + vec(b"".join(vec(ref) for ref in self.in_flight))

    def apply_commit(self, commit: bytes) -> CommitOutcome:
        """Validate a member's commit against this group and advance epoch and leaves; raises on mismatch."""
        info = parse_commit(commit)
        if info.group_id != self.group_id:
            raise MlsDecodeError("commit for another group")
        if info.epoch != self.epoch:
            raise MlsDecodeError(f"commit for epoch {info.epoch}, group is at {self.epoch}")
        if info.sender_type != SENDER_MEMBER or not (
            0 <= info.sender_index < len(self.leaves) and self.leaves[info.sender_index] is not None
        ):
            raise MlsDecodeError("commit not from a member of the group")
        changes: list[PendingChange] = []
        for ref in info.proposal_refs:
            change = self.in_flight.get(ref)
            if change is None:
                raise MlsDecodeError("commit references a proposal we did not send")
            changes.append(change)
        for proposal in info.inline:
            if proposal.kind == PROPOSAL_ADD:
                raise MlsDecodeError("inline Add: the delivery service cannot tell whose it is")
            if proposal.kind == PROPOSAL_REMOVE and proposal.removed_leaf is not None:
                leaf = proposal.removed_leaf
                user = self.leaves[leaf] if 0 <= leaf < len(self.leaves) else None
                if user is None:
                    raise MlsDecodeError("inline Remove of a blank leaf")
                changes.append(PendingChange(PROPOSAL_REMOVE, user, leaf))
        leaves = list(self.leaves)
        removed: list[int] = []
        added: list[int] = []
        for change in changes:
            if change.kind == PROPOSAL_REMOVE and change.leaf is not None:
                leaves[change.leaf] = None
                removed.append(change.user_id)
        while leaves and leaves[-1] is None:
            leaves.pop()
        for change in changes:
            if change.kind == PROPOSAL_ADD:
                try:
                    leaves[leaves.index(None)] = change.user_id
                except ValueError:
                    leaves.append(change.user_id)
                added.append(change.user_id)
        self.leaves = leaves
        self.epoch += 1
        self.in_flight.clear()
        return CommitOutcome(self.epoch, tuple(added), tuple(removed))


def new_secret_key() -> list[int]:
    """A transport key for op 4 SESSION_DESCRIPTION: 32 random bytes as a list of ints."""
    return list(secrets.token_bytes(32))


@dataclass
class TransitionIds:
    """Non-zero u16 transition ids (0 means 'execute at once' to clients)."""

    last: int = field(default=0)

    def next(self) -> int:
        self.last = self.last % 0xFFFF + 1
        return self.last
