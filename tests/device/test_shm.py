"""Shared memory between the service and the audio process: rings, the seqlock, counters and
objects by reference -- in one process and across two real processes."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import struct

import numpy as np
import pytest

from morphbox.device.engine import shm
from morphbox.device.engine.process import _without_main
from morphbox.device.packs.format import load_default_grid

REC = struct.Struct("<QdI")  # index, value, tag


@pytest.fixture
def segment():
    segs = []

    def make(size):
        seg = shm.create_segment(size, "test")
        segs.append(seg)
        return seg

    yield make
    for seg in segs:
        seg.unlink()
        seg.close()


def test_ring_round_trip_in_order(segment):
    seg = segment(shm.Ring.size(REC.size, 8))
    ring = shm.Ring(seg.buf, REC.size, 8)
    assert ring.read_struct(REC) is None and ring.pending == 0
    for i in range(5):
        assert ring.write_struct(REC, i, i * 0.5, 7)
    assert ring.pending == 5
    assert [ring.read_struct(REC) for _ in range(6)] == [
        (i, i * 0.5, 7) for i in range(5)] + [None]
    # raw bytes records too
    assert ring.write(b"hello") and ring.read_bytes() == b"hello"
    with pytest.raises(ValueError, match="slots hold"):
        ring.write(bytes(ring.payload_size + 1))
    ring.release()


def test_ring_wraps_many_times_without_loss(segment):
    seg = segment(shm.Ring.size(REC.size, 4))
    ring = shm.Ring(seg.buf, REC.size, 4)
    got = []
    for i in range(1003):
        assert ring.write_struct(REC, i, -i, i % 5)
        if i % 3 == 2:  # consume in bursts: the slots are reused ~250 times each
            while (r := ring.read_struct(REC)) is not None:
                got.append(r)
    while (r := ring.read_struct(REC)) is not None:
        got.append(r)
    assert got == [(i, -float(i), i % 5) for i in range(1003)]
    assert ring.head == ring.tail == 1003 and ring.dropped == 0 and ring.rejects == 0
    ring.release()


def test_full_ring_drops_new_records_and_counts_them(segment):
    seg = segment(shm.Ring.size(REC.size, 4))
    ring = shm.Ring(seg.buf, REC.size, 4)
    results = [ring.write_struct(REC, i, 0.0, 0) for i in range(9)]
    assert results == [True] * 4 + [False] * 5
    assert ring.dropped == 5 and ring.pending == 4
    assert [ring.read_struct(REC)[0] for _ in range(4)] == [0, 1, 2, 3]  # unread data kept
    assert ring.write_struct(REC, 9, 0.0, 0) and ring.read_struct(REC)[0] == 9
    ring.release()


def test_a_record_not_fully_visible_is_never_read(segment):
    """A slot whose stores have not all arrived (simulated: one payload byte still old) fails
    the CRC: the read returns nothing and leaves the record for the next try."""
    seg = segment(shm.Ring.size(REC.size, 4))
    ring = shm.Ring(seg.buf, REC.size, 4)
    ring.write_struct(REC, 42, 1.5, 9)
    payload = 128 + 16  # the first slot's payload (after the header and the slot's seq/crc/len)
    good = seg.buf[payload]
    seg.buf[payload] = good ^ 0xFF
    assert ring.read_struct(REC) is None and ring.rejects == 1 and ring.pending == 1
    seg.buf[payload] = good  # the store arrives
    assert ring.read_struct(REC) == (42, 1.5, 9) and ring.pending == 0
    # a slot still holding the record of the previous lap (its seq) is not taken either
    ring.reset()
    ring._hdr[0] = ring._hdr[8] = 4  # head and tail one lap on; slot 0 still has seq 0
    ring._hdr[0] = 5
    assert ring.read_struct(REC) is None
    ring.release()


def _ring_producer(name: str, n: int) -> None:
    seg = shm.attach_segment(name)
    ring = shm.Ring(seg.buf, REC.size, 16)
    i = 0
    while i < n:
        if ring.write_struct(REC, i, i * 0.25, i & 0xFFFF):
            i += 1
    ring.release()
    seg.close()


def _spawn(target, *args):
    proc = multiprocessing.get_context("spawn").Process(target=target, args=args, daemon=True)
    with _without_main():
        proc.start()
    return proc


def test_ring_between_two_processes_delivers_every_record_once_in_order(segment):
    n = 20000
    seg = segment(shm.Ring.size(REC.size, 16))
    ring = shm.Ring(seg.buf, REC.size, 16)
    proc = _spawn(_ring_producer, seg.name, n)
    got = []
    while len(got) < n:
        r = ring.read_struct(REC)
        if r is not None:
            got.append(r)
        elif not proc.is_alive() and ring.pending == 0:
            break
    proc.join(30)
    assert proc.exitcode == 0
    assert got == [(i, i * 0.25, i & 0xFFFF) for i in range(n)]
    ring.release()


VALS = struct.Struct("<8d")


def test_seqlock_round_trip_versions_and_refusals(segment):
    seg = segment(shm.SeqLock.size(VALS.size))
    lock = shm.SeqLock(seg.buf, VALS.size)
    assert lock.read_struct(VALS) is None and lock.version == 0  # never written
    v1 = lock.write_struct(VALS, *range(8))
    assert lock.read_struct(VALS) == (tuple(float(i) for i in range(8)), v1)
    v2 = lock.write_struct(VALS, *[9.0] * 8)
    assert v2 == v1 + 2 == lock.version
    lock._seq[0] = v2 + 1  # a write under way: readers never take the half-written record
    assert lock.read_struct(VALS) is None
    lock._seq[0] = v2
    assert lock.read_struct(VALS)[0] == (9.0,) * 8
    with pytest.raises(ValueError, match="holds"):
        lock.write_struct(struct.Struct("<20d"), *range(20))
    lock.release()


def _seqlock_writer(name: str, n: int) -> None:
    seg = shm.attach_segment(name)
    lock = shm.SeqLock(seg.buf, VALS.size)
    for i in range(1, n + 1):
        lock.write_struct(VALS, *[float(i)] * 8)
    lock.release()
    seg.close()


def test_seqlock_torn_reads_are_impossible_across_processes(segment):
    """Another process rewrites the record as fast as it can, every field the same number;
    every record this process accepts has all eight fields equal, and versions never go
    back."""
    n = 200_000
    seg = segment(shm.SeqLock.size(VALS.size))
    lock = shm.SeqLock(seg.buf, VALS.size)
    proc = _spawn(_seqlock_writer, seg.name, n)
    accepted, refused, last = 0, 0, 0
    while proc.is_alive() or lock.version < 2 * n:
        r = lock.read_struct(VALS)
        if r is None:
            refused += 1
            continue
        values, version = r
        assert len(set(values)) == 1, values  # never a mix of two writes
        assert version >= last
        last = version
        accepted += 1
        if not proc.is_alive() and values[0] == n:
            break
    proc.join(30)
    assert proc.exitcode == 0 and accepted > 100
    assert lock.read_struct(VALS)[0] == (float(n),) * 8
    lock.release()


def test_counters(segment):
    names = ("a", "b", "c")
    seg = segment(shm.Counters.size(names))
    c = shm.Counters(seg.buf, names)
    c["a"] = 3
    c.add("a")
    c.add("b", 0.5)
    assert c.as_dict() == {"a": 4.0, "b": 0.5, "c": 0.0}
    other = shm.Counters(seg.buf, names)  # another view (the other process) sees the same
    assert other["a"] == 4.0
    c.release()
    other.release()


def test_a_grid_travels_by_reference_and_read_only():
    grid = load_default_grid()
    seg = shm.put_object(grid, "test-grid")
    try:
        reader = shm.attach_segment(seg.name)
        got = shm.get_object(reader)
        base = np.frombuffer(reader.buf, np.uint8)
        arrays = 0
        for f in dataclasses.fields(grid):  # every field of the Grid, whatever it holds
            want, have = getattr(grid, f.name), getattr(got, f.name)
            if isinstance(want, np.ndarray):
                arrays += 1
                assert have.dtype == want.dtype and np.array_equal(have, want), f.name
                if want.nbytes:  # views of the segment, not copies
                    assert not have.flags.writeable and np.shares_memory(have, base), f.name
            else:
                assert have == want, f.name
        assert arrays >= 2 and got.frames_db.nbytes > 10**6
        del got, base, have, want
        reader.close()
    finally:
        seg.unlink()
        seg.close()


def test_a_segment_without_an_object_is_refused(segment):
    seg = segment(64)
    seg.buf[:16] = struct.pack("<QQ", 10**9, 0)
    with pytest.raises(ValueError, match="holds no object|out of range"):
        shm.get_object(seg)


def test_remove_stale_deletes_only_segments_of_dead_processes(tmp_path):
    dead = _spawn(os.getpid)  # a pid that existed and is gone
    dead.join(30)
    (tmp_path / f"morphbox-{dead.pid}-grid-1").write_bytes(b"x")
    (tmp_path / f"morphbox-{os.getpid()}-grid-2").write_bytes(b"x")
    (tmp_path / "other-file").write_bytes(b"x")
    assert shm.remove_stale(tmp_path) == [f"morphbox-{dead.pid}-grid-1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"morphbox-{os.getpid()}-grid-2", "other-file"]
