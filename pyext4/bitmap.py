"""Block and inode bitmaps as Python integers: whole-word bit work, never a loop per bit.

Bit ``i`` of a bitmap is bit ``i % 8`` of byte ``i // 8`` on disk, which is
exactly ``int.from_bytes(raw, "little")``.  An int holds one group's bitmap
(at most 2^19 bits for 64 KiB blocks), so every operation is a handful of
big-integer instructions.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right


class Bitmap:
    """A fixed-size bitmap; ``size`` bits are meaningful, the rest is padding."""

    __slots__ = ("bits", "size", "_mask")

    def __init__(self, size: int, raw: bytes | bytearray | memoryview | None = None) -> None:
        self.size = size
        self._mask = (1 << size) - 1
        if raw is None:
            self.bits = 0
        else:
            self.bits = int.from_bytes(raw[: (size + 7) // 8], "little") & self._mask

    # --------------------------------------------------------------- queries
    def test(self, index: int) -> bool:
        return bool((self.bits >> index) & 1)

    def count(self) -> int:
        """Number of set bits."""
        return self.bits.bit_count()

    def count_range(self, start: int, count: int) -> int:
        """Number of set bits in ``[start, start + count)``."""
        return ((self.bits >> start) & ((1 << count) - 1)).bit_count()

    def all_clear(self, start: int, count: int) -> bool:
        return not ((self.bits >> start) & ((1 << count) - 1))

    def find_zero(self, start: int = 0, end: int | None = None) -> int:
        """First clear bit in ``[start, end)``, or -1."""
        end = self.size if end is None else min(end, self.size)
        if start >= end:
            return -1
        inverted = ~(self.bits >> start) & ((1 << (end - start)) - 1)
        if not inverted:
            return -1
        return start + (inverted & -inverted).bit_length() - 1

    def find_set(self, start: int = 0, end: int | None = None) -> int:
        """First set bit in ``[start, end)``, or -1."""
        end = self.size if end is None else min(end, self.size)
        if start >= end:
            return -1
        window = (self.bits >> start) & ((1 << (end - start)) - 1)
        if not window:
            return -1
        return start + (window & -window).bit_length() - 1

    def find_zero_run(self, length: int, start: int = 0, end: int | None = None) -> int:
        """First index of ``length`` consecutive clear bits within ``[start, end)``, or -1."""
        end = self.size if end is None else min(end, self.size)
        pos = start
        while pos + length <= end:
            pos = self.find_zero(pos, end)
            if pos < 0 or pos + length > end:
                return -1
            nxt = self.find_set(pos, pos + length)
            if nxt < 0:
                return pos
            pos = nxt + 1
        return -1

    def zero_runs(self, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
        """Every maximal run of clear bits in ``[start, end)`` as (start, length)."""
        end = self.size if end is None else min(end, self.size)
        runs = []
        pos = start
        while pos < end:
            pos = self.find_zero(pos, end)
            if pos < 0:
                break
            stop = self.find_set(pos, end)
            if stop < 0:
                stop = end
            runs.append((pos, stop - pos))
            pos = stop
        return runs

    # ------------------------------------------------------------- changes
    def set(self, index: int) -> None:
        self.bits |= 1 << index

    def clear(self, index: int) -> None:
        self.bits &= ~(1 << index)

    def set_range(self, start: int, count: int) -> None:
        if count > 0:
            self.bits |= ((1 << count) - 1) << start

    def clear_range(self, start: int, count: int) -> None:
        if count > 0:
            self.bits &= ~(((1 << count) - 1) << start)

    # ------------------------------------------------------------ encoding
    def to_bytes(self, nbytes: int) -> bytes:
        """On-disk form: ``nbytes`` long, every bit past ``size`` set (as mke2fs pads)."""
        total = nbytes * 8
        padded = self.bits | (((1 << (total - self.size)) - 1) << self.size) if total > self.size else self.bits
        return padded.to_bytes(nbytes, "little")

    def checksum_bytes(self, nbytes: int) -> bytes:
        """The first ``nbytes`` of the on-disk form (what bitmap checksums cover)."""
        return self.to_bytes(max(nbytes, (self.size + 7) // 8))[:nbytes]

    def copy(self) -> Bitmap:
        other = Bitmap(self.size)
        other.bits = self.bits
        return other

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bitmap) and other.size == self.size and other.bits == self.bits

    def __repr__(self) -> str:
        return f"Bitmap(size={self.size}, set={self.count()})"


class RangeSet:
    """A set of blocks kept as sorted, merged half-open ranges ``[start, end)``.

    Used where a full bitmap would be wasteful: planning mkfs layouts over
    millions of groups, and tracking extents.
    """

    __slots__ = ("_starts", "_ends")

    def __init__(self, ranges: list[tuple[int, int]] | None = None) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, count in ranges or ():
            self.add(start, count)

    def add(self, start: int, count: int) -> None:
        """Add ``[start, start + count)``, merging with neighbours."""
        if count <= 0:
            return

        end = start + count
        lo = bisect_left(self._ends, start)
        hi = bisect_right(self._starts, end)
        if lo < hi:
            start = min(start, self._starts[lo])
            end = max(end, self._ends[hi - 1])
        self._starts[lo:hi] = [start]
        self._ends[lo:hi] = [end]

    def remove(self, start: int, count: int) -> None:
        """Remove ``[start, start + count)``."""
        if count <= 0:
            return

        end = start + count
        lo = bisect_right(self._ends, start)
        hi = bisect_left(self._starts, end)
        new_s: list[int] = []
        new_e: list[int] = []
        for i in range(lo, hi):
            s, e = self._starts[i], self._ends[i]
            if s < start:
                new_s.append(s)
                new_e.append(start)
            if e > end:
                new_s.append(end)
                new_e.append(e)
        self._starts[lo:hi] = new_s
        self._ends[lo:hi] = new_e

    def contains(self, block: int) -> bool:

        i = bisect_right(self._starts, block) - 1
        return i >= 0 and block < self._ends[i]

    def overlaps(self, start: int, count: int) -> bool:

        i = bisect_right(self._starts, start + count - 1) - 1
        return i >= 0 and self._ends[i] > start

    def next_used(self, start: int) -> tuple[int, int] | None:
        """The first range ending after ``start`` (it may contain ``start``)."""

        i = bisect_right(self._ends, start)
        if i < len(self._starts):
            return self._starts[i], self._ends[i]
        return None

    def first_free(self, start: int) -> int:
        """Smallest block >= start not in the set."""
        rng = self.next_used(start)
        if rng is not None and rng[0] <= start:
            return rng[1]
        return start

    def find_free_run(self, start: int, finish: int, length: int) -> int:
        """Smallest b in ``[start, finish)`` with ``[b, b + length)`` free, or -1."""
        starts, ends = self._starts, self._ends
        b = start
        while b < finish:
            i = bisect_right(ends, b)  # the first range ending after b
            if i == len(starts) or starts[i] >= b + length:
                return b
            b = ends[i]  # past the range in the way (it ends after b, so this always advances)
        return -1

    def count_in(self, start: int, end: int) -> int:
        """Blocks of the set inside ``[start, end)``."""

        total = 0
        lo = bisect_right(self._ends, start)
        hi = bisect_left(self._starts, end)
        for i in range(lo, hi):
            total += min(end, self._ends[i]) - max(start, self._starts[i])
        return total

    def ranges_in(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of the set inside ``[start, end)`` as (start, end) pairs."""

        lo = bisect_right(self._ends, start)
        hi = bisect_left(self._starts, end)
        return [(max(start, self._starts[i]), min(end, self._ends[i])) for i in range(lo, hi)]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(zip(self._starts, self._ends))

    def __len__(self) -> int:
        return sum(e - s for s, e in zip(self._starts, self._ends))

    def __repr__(self) -> str:
        return f"RangeSet({list(zip(self._starts, self._ends))})"
