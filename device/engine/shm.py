"""Lock-free shared memory between two processes: rings of fixed-size records, a seqlock for
one record, shared counters, and segments that carry a whole object (a grid) by reference.

The audio process (:mod:`morphbox.device.engine.process`) and the service talk only through
these; neither side ever waits for the other:

* :class:`Ring` -- single producer / single consumer ring of ``capacity`` slots of
  ``slot_size`` bytes in a shared buffer. Layout: a 128-byte header (``head`` = records
  written, ``dropped`` = records refused because the ring was full, both written by the
  producer only; ``tail`` = records consumed, on its own 64-byte cache line, written by the
  consumer only), then the slots. A slot is ``seq`` (uint64: the record's index since the
  start), ``crc`` (uint32), ``length`` (uint32), then the payload. The producer fills a slot,
  then publishes it by storing ``head + 1``; the consumer reads ``head``, checks the slot and
  stores ``tail + 1``. A full ring drops the new record and counts it (never blocks, never
  overwrites unread data).
* :class:`SeqLock` -- one record (a control snapshot, a mailbox) with one writer and any
  number of readers: the writer makes ``seq`` odd, writes the payload and its CRC, makes
  ``seq`` even; a reader copies the payload between two reads of ``seq`` and accepts it only
  if both are the same even value and the CRC matches. A reader never waits: after a few
  failed tries it returns ``None`` (keep the previous value; try again next block).
* :class:`Counters` -- named float64 words, each written by one side (stats, flags).
* :func:`put_object` / :func:`get_object` -- an object (a :class:`morphbox.device.packs.format.
  Grid`) in a segment of its own: pickle protocol 5 with its numpy arrays out of band, so the
  reader's arrays are views of the shared memory (no copy, read-only).

Memory ordering. The indices and ``seq`` are aligned 8-byte words written with one store each
(``memoryview.cast("Q")``), so they are never torn. On x86 (total store order) the order of the
stores above is the order the other side sees. On weakly ordered CPUs (the Pi's aarch64) Python
has no fence, so every slot and every seqlock record also carries a CRC-32 over its index,
length and payload: a record whose stores arrive out of order fails the check and is read again
later (the ring keeps it, the seqlock returns ``None``). A reader therefore never acts on a
torn or stale record; it can only see it a block later. ``rejects`` counts those retries.

Segments are POSIX shared memory (``multiprocessing.shared_memory``) named
``morphbox-<pid>-<tag>`` after the creating process, so :func:`remove_stale` can delete what a
killed service left in ``/dev/shm``.

Owns: nothing of the box's state. Imports: the standard library and numpy.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import pickle
import struct
import zlib
from multiprocessing import shared_memory
from pathlib import Path

__all__ = ["Counters", "Ring", "Segment", "SeqLock", "create_segment", "attach_segment",
           "get_object", "put_object", "remove_stale", "SEGMENT_PREFIX"]

SEGMENT_PREFIX = "morphbox-"
_ALIGN = 64
_counter = itertools.count()


def _align(n: int, a: int = _ALIGN) -> int:
    return -(-n // a) * a


# ---- segments ---------------------------------------------------------------------------------

class Segment(shared_memory.SharedMemory):
    """A ``SharedMemory`` that may be dropped while views of it live: its mapping then goes
    when the last view does (the standard class complains from ``__del__``)."""

    def __del__(self):
        with contextlib.suppress(BufferError, OSError):
            self.close()


def create_segment(size: int, tag: str, shm_dir: str = "/dev/shm") -> Segment:
    """A new zero-filled segment of at least ``size`` bytes named
    ``morphbox-<pid>-<tag>-<n>``. Raises ``OSError`` (ENOSPC) if ``shm_dir`` has not that much
    room: shared memory is a sparse tmpfs file, and writing past its room would end the
    process with SIGBUS instead of an error."""
    size = max(int(size), 1)
    try:
        st = os.statvfs(shm_dir)
        room = st.f_bavail * st.f_frsize
    except OSError:
        room = None
    if room is not None and size > room:
        raise OSError(errno.ENOSPC, f"{shm_dir} has {room / 1e6:.0f} MB free, "
                      f"{size / 1e6:.0f} MB needed for shared memory")
    name = f"{SEGMENT_PREFIX}{os.getpid()}-{tag}-{next(_counter)}"
    return Segment(name=name, create=True, size=size)


def attach_segment(name: str) -> Segment:
    """Map the existing segment ``name``. Raises ``FileNotFoundError`` if it is gone."""
    return Segment(name=name, create=False)


def remove_stale(shm_dir: str | os.PathLike = "/dev/shm") -> list[str]:
    """Unlink ``morphbox-<pid>-*`` segments whose creating process no longer exists (a
    service that was killed); returns their names. Never raises."""
    removed = []
    try:
        entries = list(Path(shm_dir).glob(f"{SEGMENT_PREFIX}*"))
    except OSError:
        return removed
    for path in entries:
        pid_text = path.name[len(SEGMENT_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
            continue  # alive (or not ours to signal: EPERM below)
        except ProcessLookupError:
            pass
        except OSError:
            continue
        try:
            path.unlink()
            removed.append(path.name)
        except OSError:
            pass
    return removed


# ---- counters -----------------------------------------------------------------------------

class Counters:
    """Named float64 words in a shared buffer. Each word must have one writer; any side reads.

    ``Counters.size(names)`` bytes at ``offset`` of ``buf``. ``c[name]`` reads, ``c[name] = v``
    writes (one aligned 8-byte store), ``c.add(name, d)`` increments (writer side only).
    """

    def __init__(self, buf, names: tuple[str, ...], offset: int = 0):
        self.names = tuple(names)
        self._index = {n: i for i, n in enumerate(self.names)}
        self._w = memoryview(buf)[offset:offset + self.size(self.names)].cast("d")

    @staticmethod
    def size(names) -> int:
        return _align(8 * len(names))

    def __getitem__(self, name: str) -> float:
        return self._w[self._index[name]]

    def __setitem__(self, name: str, value: float) -> None:
        self._w[self._index[name]] = float(value)

    def add(self, name: str, delta: float = 1.0) -> None:
        i = self._index[name]
        self._w[i] = self._w[i] + delta

    def as_dict(self) -> dict[str, float]:
        return {n: self._w[i] for i, n in enumerate(self.names)}

    def release(self) -> None:
        self._w.release()


# ---- the ring -----------------------------------------------------------------------------

_SLOT = struct.Struct("<QII")  # seq, crc, length
_HEAD, _DROPPED, _TAIL, _REJECTS = 0, 1, 8, 9  # uint64 word indices in the 128-byte header
_HEADER = 128


class Ring:
    """Single-producer / single-consumer ring of records (module docstring for the layout).

    Args:
        buf: a writable buffer shared by both processes (a segment's ``buf``).
        slot_payload: the largest record, bytes.
        capacity: slots.
        offset: where the ring starts in ``buf`` (:meth:`size` bytes from there).

    Producer: :meth:`write` / :meth:`write_struct` (False and ``dropped`` + 1 if full).
    Consumer: :meth:`read_struct` / :meth:`read_into` / :meth:`read_bytes` (None/False if
    empty or the next record is not fully visible yet).
    """

    def __init__(self, buf, slot_payload: int, capacity: int, offset: int = 0):
        if capacity < 1 or slot_payload < 1:
            raise ValueError("a ring needs at least one slot of at least one byte")
        self.capacity = int(capacity)
        self.slot_size = _align(_SLOT.size + int(slot_payload), 16)
        self.payload_size = self.slot_size - _SLOT.size
        mv = memoryview(buf)[offset:offset + self.size(slot_payload, capacity)]
        self._mv = mv
        self._hdr = mv[:_HEADER].cast("Q")
        self._slots = mv[_HEADER:]

    @staticmethod
    def size(slot_payload: int, capacity: int) -> int:
        """Bytes a ring of ``capacity`` slots of ``slot_payload`` bytes takes."""
        return _HEADER + _align(_SLOT.size + int(slot_payload), 16) * int(capacity)

    # -- state ------------------------------------------------------------------------------
    @property
    def head(self) -> int:
        return self._hdr[_HEAD]

    @property
    def tail(self) -> int:
        return self._hdr[_TAIL]

    @property
    def pending(self) -> int:
        """Records written and not yet read."""
        return max(0, self._hdr[_HEAD] - self._hdr[_TAIL])

    @property
    def dropped(self) -> int:
        """Records refused because the ring was full (producer's count)."""
        return self._hdr[_DROPPED]

    @property
    def rejects(self) -> int:
        """Reads retried because a record was not fully visible yet (consumer's count)."""
        return self._hdr[_REJECTS]

    def reset(self) -> None:
        """Forget unread records (tail = head). Only while the consumer is not running."""
        self._hdr[_TAIL] = self._hdr[_HEAD]

    # -- producer ---------------------------------------------------------------------------
    def _slot(self) -> int | None:
        head = self._hdr[_HEAD]
        if head - self._hdr[_TAIL] >= self.capacity:
            self._hdr[_DROPPED] = self._hdr[_DROPPED] + 1
            return None
        return head

    def _publish(self, head: int, off: int, n: int) -> None:
        s = self._slots
        crc = zlib.crc32(s[off + _SLOT.size:off + _SLOT.size + n],
                         zlib.crc32(struct.pack("<QI", head, n)))
        _SLOT.pack_into(s, off, head, crc, n)
        self._hdr[_HEAD] = head + 1

    def write(self, data) -> bool:
        """Copy the bytes-like ``data`` (at most ``payload_size`` bytes) into the next slot.
        False (counted in ``dropped``) if the ring is full. Raises ``ValueError`` if too big."""
        data = memoryview(data).cast("B")
        n = data.nbytes
        if n > self.payload_size:
            raise ValueError(f"record of {n} bytes, slots hold {self.payload_size}")
        head = self._slot()
        if head is None:
            return False
        off = (head % self.capacity) * self.slot_size
        self._slots[off + _SLOT.size:off + _SLOT.size + n] = data
        self._publish(head, off, n)
        return True

    def write_struct(self, st: struct.Struct, *values) -> bool:
        """Pack ``values`` with ``st`` straight into the next slot (no temporary bytes)."""
        head = self._slot()
        if head is None:
            return False
        off = (head % self.capacity) * self.slot_size
        st.pack_into(self._slots, off + _SLOT.size, *values)
        self._publish(head, off, st.size)
        return True

    # -- consumer ---------------------------------------------------------------------------
    def _next(self) -> tuple[int, int, int] | None:
        """(tail, offset, length) of the next complete record, or None."""
        tail = self._hdr[_TAIL]
        if tail >= self._hdr[_HEAD]:
            return None
        off = (tail % self.capacity) * self.slot_size
        s = self._slots
        seq, crc, n = _SLOT.unpack_from(s, off)
        if seq != tail or n > self.payload_size or zlib.crc32(
                s[off + _SLOT.size:off + _SLOT.size + n],
                zlib.crc32(struct.pack("<QI", seq, n))) != crc:
            self._hdr[_REJECTS] = self._hdr[_REJECTS] + 1
            return None  # not fully visible yet: the next read tries again
        return tail, off + _SLOT.size, n

    def read_struct(self, st: struct.Struct) -> tuple | None:
        """The next record unpacked with ``st`` (and consumed), or None."""
        nxt = self._next()
        if nxt is None:
            return None
        tail, off, n = nxt
        if n != st.size:  # a record of another shape: skip it, never misread it
            self._hdr[_TAIL] = tail + 1
            return None
        values = st.unpack_from(self._slots, off)
        self._hdr[_TAIL] = tail + 1
        return values

    def read_into(self, out) -> int:
        """Copy the next record into the writable buffer ``out`` (consuming it); returns its
        length in bytes, 0 if there is none. A record longer than ``out`` is skipped (-1)."""
        nxt = self._next()
        if nxt is None:
            return 0
        tail, off, n = nxt
        dst = memoryview(out).cast("B")
        if n > dst.nbytes:
            self._hdr[_TAIL] = tail + 1
            return -1
        dst[:n] = self._slots[off:off + n]
        # the copy may have raced a producer that lapped us only if tail moved: it cannot
        # (only we move tail), and the producer never writes a slot before tail passes it
        self._hdr[_TAIL] = tail + 1
        return n

    def read_bytes(self) -> bytes | None:
        """The next record as ``bytes`` (consumed), or None."""
        nxt = self._next()
        if nxt is None:
            return None
        tail, off, n = nxt
        data = bytes(self._slots[off:off + n])
        self._hdr[_TAIL] = tail + 1
        return data

    def release(self) -> None:
        """Drop the views (before the segment is closed)."""
        for v in (self._hdr, self._slots, self._mv):
            v.release()


# ---- the seqlock --------------------------------------------------------------------------

class SeqLock:
    """One record with one writer and lock-free readers (module docstring).

    ``SeqLock.size(payload)`` bytes at ``offset`` of ``buf``. The writer calls
    :meth:`write_struct` (callers with several writer threads serialise them themselves);
    readers call :meth:`read_struct`, which returns ``(values, version)`` or None.
    """

    _HDR = struct.Struct("<II")  # crc, length (after the 8-byte seq word)

    def __init__(self, buf, payload_size: int, offset: int = 0, tries: int = 3):
        self.payload_size = int(payload_size)
        self.tries = int(tries)
        mv = memoryview(buf)[offset:offset + self.size(payload_size)]
        self._mv = mv
        self._seq = mv[:8].cast("Q")
        self._body = mv[8:]

    @staticmethod
    def size(payload_size: int) -> int:
        return _align(16 + int(payload_size), 16)

    @property
    def version(self) -> int:
        """Increases by 2 with every completed write (0: never written)."""
        return self._seq[0] & ~1

    def write_struct(self, st: struct.Struct, *values) -> int:
        """Publish ``values`` packed with ``st``; returns the new version."""
        if st.size > self.payload_size:
            raise ValueError(f"record of {st.size} bytes, the seqlock holds {self.payload_size}")
        seq = self._seq[0] | 1  # odd: a write is under way
        self._seq[0] = seq
        body = self._body
        st.pack_into(body, 8, *values)
        crc = zlib.crc32(body[8:8 + st.size], zlib.crc32(struct.pack("<QI", seq + 1, st.size)))
        self._HDR.pack_into(body, 0, crc, st.size)
        self._seq[0] = seq + 1
        return seq + 1

    def read_struct(self, st: struct.Struct) -> tuple[tuple, int] | None:
        """``(values, version)`` of a complete record, or None (never written, a write under
        way on every try, or not fully visible yet)."""
        body, seqw = self._body, self._seq
        for _ in range(self.tries):
            s1 = seqw[0]
            if s1 == 0 or s1 & 1:
                continue
            crc, n = self._HDR.unpack_from(body, 0)
            if n != st.size:
                continue
            values = st.unpack_from(body, 8)
            ok = zlib.crc32(body[8:8 + n], zlib.crc32(struct.pack("<QI", s1, n))) == crc
            if ok and seqw[0] == s1:
                return values, s1
        return None

    def release(self) -> None:
        for v in (self._seq, self._body, self._mv):
            v.release()


# ---- objects by reference -----------------------------------------------------------------

_OBJ_HDR = struct.Struct("<QQ")  # pickle length, number of buffers
_BUF_ENTRY = struct.Struct("<QQ")  # offset, length


def put_object(obj, tag: str) -> shared_memory.SharedMemory:
    """A new segment holding ``obj`` (pickle protocol 5, numpy arrays out of band, each
    64-byte aligned). The caller owns the segment (close + unlink it when done)."""
    buffers: list[pickle.PickleBuffer] = []
    meta = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    table = _OBJ_HDR.size + _BUF_ENTRY.size * len(raws)
    pos = _align(table + len(meta))
    entries = []
    for r in raws:
        entries.append((pos, r.nbytes))
        pos = _align(pos + r.nbytes)
    seg = create_segment(pos, tag)
    mv = seg.buf
    _OBJ_HDR.pack_into(mv, 0, len(meta), len(raws))
    for i, (off, n) in enumerate(entries):
        _BUF_ENTRY.pack_into(mv, _OBJ_HDR.size + i * _BUF_ENTRY.size, off, n)
    mv[table:table + len(meta)] = meta
    for r, (off, n) in zip(raws, entries):
        mv[off:off + n] = r
        r.release()
    for b in buffers:
        b.release()
    return seg


def get_object(seg: shared_memory.SharedMemory, readonly: bool = True):
    """The object :func:`put_object` stored in ``seg``; its arrays are views of the segment
    (keep ``seg`` mapped while they are in use), read-only unless ``readonly=False`` (the
    audio process: numba's compiled kernels take only writable arrays; it never writes them).
    Raises ``ValueError`` if the segment does not hold one."""
    mv = seg.buf
    try:
        n_meta, n_buf = _OBJ_HDR.unpack_from(mv, 0)
        table = _OBJ_HDR.size + _BUF_ENTRY.size * n_buf
        if table + n_meta > mv.nbytes:
            raise ValueError("object header out of range")
        views = []
        for i in range(n_buf):
            off, n = _BUF_ENTRY.unpack_from(mv, _OBJ_HDR.size + i * _BUF_ENTRY.size)
            if off + n > mv.nbytes:
                raise ValueError("object buffer out of range")
            view = mv[off:off + n]
            views.append(view.toreadonly() if readonly else view)
        return pickle.loads(mv[table:table + n_meta], buffers=views)
    except (struct.error, pickle.UnpicklingError, EOFError) as exc:
        raise ValueError(f"segment {seg.name} holds no object: {exc}") from exc
