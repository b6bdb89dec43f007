"""JitterBuffer: ordering by sequence number, wrap-around, duplicates, bounded waiting."""

from bot.audio.jitter import ACCEPTED, DUPLICATE, LATE, JitterBuffer


def push(jb: JitterBuffer, seq: int) -> int:
    status, ext = jb.classify(seq)
    if status == ACCEPTED:
        jb.insert(ext, seq.to_bytes(2, "big"))
    return status


def drain(jb: JitterBuffer, force: bool = False) -> list[tuple[int, int]]:
    out = []
    while (item := jb.pop(force)) is not None:
        out.append((item[0], int.from_bytes(item[1], "big")))
    return out


def test_in_order_packets_are_released_immediately():
    jb = JitterBuffer(depth=3)
    for seq in range(10):
        assert push(jb, seq) == ACCEPTED
        assert drain(jb) == [(0, seq)]


def test_reordered_packet_fills_the_gap_before_release():
    jb = JitterBuffer(depth=3)
    push(jb, 0)
    drain(jb)
    push(jb, 2)
    push(jb, 3)
    assert drain(jb) == []  # waiting for 1
    push(jb, 1)
    assert drain(jb) == [(0, 1), (0, 2), (0, 3)]


def test_gap_declared_lost_when_depth_exceeded():
    jb = JitterBuffer(depth=2)
    push(jb, 10)
    drain(jb)
    for seq in (12, 13):
        push(jb, seq)
        assert drain(jb) == []
    push(jb, 14)
    assert drain(jb) == [(1, 12), (0, 13), (0, 14)]
    assert push(jb, 11) == LATE


def test_duplicates_buffered_and_played():
    jb = JitterBuffer(depth=3)
    push(jb, 5)
    drain(jb)
    assert push(jb, 5) == DUPLICATE  # already played
    push(jb, 7)
    assert push(jb, 7) == DUPLICATE  # still buffered
    push(jb, 6)
    assert drain(jb) == [(0, 6), (0, 7)]


def test_sequence_wraps_around():
    jb = JitterBuffer(depth=3)
    seqs = [65533, 65534, 65535, 0, 1, 2]
    out = []
    for seq in seqs:
        assert push(jb, seq) == ACCEPTED
        out += drain(jb)
    assert out == [(0, s) for s in seqs]
    jb2 = JitterBuffer(depth=3)
    push(jb2, 65534)
    drain(jb2)
    push(jb2, 0)  # 65535 missing across the wrap
    push(jb2, 65535)
    assert drain(jb2) == [(0, 65535), (0, 0)]


def test_force_releases_across_gaps():
    jb = JitterBuffer(depth=5)
    push(jb, 1)
    drain(jb)
    push(jb, 4)
    assert drain(jb) == []
    assert drain(jb, force=True) == [(2, 4)]


def test_far_jump_with_empty_buffer_is_a_new_sequence_not_a_loss():
    jb = JitterBuffer(depth=3)
    push(jb, 1000)
    drain(jb)
    assert push(jb, 1000 - 300) == ACCEPTED  # sender restarted lower: not "late" forever
    assert drain(jb) == [(0, 700)]
    assert push(jb, 40000) == ACCEPTED  # far ahead: followed at once, not held for depth
    assert drain(jb) == [(0, 40000)]
    assert push(jb, 40001 + 100) == ACCEPTED  # a real (short) gap still waits for reordering
    assert drain(jb) == []
