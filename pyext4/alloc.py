"""Allocation policy: which groups to try for a new inode and which free run to take (no I/O)."""

from __future__ import annotations

from collections.abc import Callable, Iterator


def groups_from(start: int, group_count: int) -> Iterator[int]:
    """Every group once, starting at ``start`` and wrapping around."""
    start %= group_count
    yield from range(start, group_count)
    yield from range(0, start)


def flex_start(group: int, log_groups_per_flex: int) -> int:
    return group >> log_groups_per_flex << log_groups_per_flex


def inode_groups(
    *,
    is_dir: bool,
    parent_group: int,
    group_count: int,
    log_groups_per_flex: int,
    free_inodes: Callable[[int], int],
    free_blocks: Callable[[int], int],
    used_dirs: Callable[[int], int],
    top_level: bool,
    spread_hint: int = 0,
) -> Iterator[int]:
    """Groups to try, best first, for a new inode (a simplified Orlov allocator).

    Files go near their parent.  Directories under the root are spread over
    the flex groups with the most room and fewest directories; deeper
    directories stay in their parent's flex group while it has room.
    ``spread_hint`` (e.g. a hash of the name) varies ties deterministically.
    """
    if not is_dir:
        yield from groups_from(parent_group, group_count)
        return
    per_flex = 1 << log_groups_per_flex
    flex_count = -(-group_count // per_flex)
    if top_level and flex_count > 1:
        stats = []
        total_inodes = total_blocks = 0
        for f in range(flex_count):
            first = f * per_flex
            groups = range(first, min(first + per_flex, group_count))
            fi = sum(free_inodes(g) for g in groups)
            fb = sum(free_blocks(g) for g in groups)
            dirs = sum(used_dirs(g) for g in groups)
            stats.append((f, fi, fb, dirs))
            total_inodes += fi
            total_blocks += fb
        avg_inodes = total_inodes // flex_count
        avg_blocks = total_blocks // flex_count
        good = [s for s in stats if s[1] >= avg_inodes and s[2] >= avg_blocks and s[1] > 0]
        good.sort(key=lambda s: (s[3], (s[0] - spread_hint) % flex_count))
        seen: set[int] = set()
        for f, _fi, _fb, _dirs in good:
            first = f * per_flex
            for g in range(first, min(first + per_flex, group_count)):
                seen.add(g)
                yield g
        for g in groups_from(parent_group, group_count):
            if g not in seen:
                yield g
        return
    yield from groups_from(flex_start(parent_group, log_groups_per_flex), group_count)


def choose_run(runs: list[tuple[int, int]], goal: int, want: int) -> tuple[int, int] | None:
    """From free runs (start, length) of one group, the run to allocate from, and where in it.

    Prefers the first run at or after ``goal`` long enough for ``want``; then
    any run long enough; then the longest run.  Returns (start, length taken).
    """
    if not runs:
        return None
    for start, length in runs:
        if start + length > goal and length >= want:
            begin = max(start, goal)
            if start + length - begin >= want:
                return begin, want
            return start, want
    for start, length in runs:
        if length >= want:
            return start, want
    start, length = max(runs, key=lambda r: r[1])
    return start, min(length, want)
