"""A local DAVE group: the test plays the voice gateway's external sender (protocols.md §3).

Only ``cryptography`` (P-256 ECDSA) and real ``davey`` sessions are used, so what Parley decrypts
here was encrypted by the same library Discord clients' frames are checked against.
"""

from __future__ import annotations

import struct

import davey
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec


def mls_vec(data: bytes) -> bytes:
    """MLS variable-length vector: QUIC-style varint length prefix."""
    n = len(data)
    if n < 64:
        prefix = bytes([n])
    elif n < 16384:
        prefix = struct.pack(">H", 0x4000 | n)
    else:
        prefix = struct.pack(">I", 0x80000000 | n)
    return prefix + data


class ExternalSender:
    """Signs external Add proposals like Discord's voice gateway does."""

    def __init__(self, identity: bytes = b"parley-test-gateway") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        public = self._key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self.package = mls_vec(public) + struct.pack(">H", 1) + mls_vec(identity)

    def add_proposal(self, group_id: bytes, epoch: int, key_package: bytes) -> bytes:
        content = (
            mls_vec(group_id)
            + struct.pack(">Q", epoch)
            + bytes([2])  # sender_type = external
            + struct.pack(">I", 0)  # sender_index
            + mls_vec(b"")  # authenticated_data
            + bytes([2])  # content_type = proposal
            + struct.pack(">H", 1)  # proposal_type = add
            + key_package
        )
        tbs = mls_vec(b"MLS 1.0 FramedContentTBS") + mls_vec(struct.pack(">HH", 1, 1) + content)
        signature = self._key.sign(tbs, ec.ECDSA(hashes.SHA256()))
        return struct.pack(">HH", 1, 1) + content + mls_vec(signature)


def make_group(user_ids: list[int], channel_id: int = 1_234_567_890) -> dict[int, davey.DaveSession]:
    """Sessions for ``user_ids`` that share an MLS group at epoch 1 (first one commits)."""
    sender = ExternalSender()
    sessions = {uid: davey.DaveSession(davey.DAVE_PROTOCOL_VERSION, uid, channel_id) for uid in user_ids}
    for session in sessions.values():
        session.set_external_sender(sender.package)
    committer, *others = user_ids
    sessions[committer].get_serialized_key_package()
    group_id = struct.pack(">Q", channel_id)
    proposals = b"".join(
        sender.add_proposal(group_id, 0, sessions[uid].get_serialized_key_package()) for uid in others
    )
    result = sessions[committer].process_proposals(
        davey.ProposalsOperationType.append, mls_vec(proposals), others
    )
    assert result is not None and result.welcome is not None
    for uid in others:
        sessions[uid].process_welcome(result.welcome)
    sessions[committer].process_commit(result.commit)
    assert all(s.ready for s in sessions.values())
    return sessions
