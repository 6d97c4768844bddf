"""Allocation policy: group orders for new inodes and the choice of a free run (pure functions)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pyext4.alloc import choose_run, flex_start, groups_from, inode_groups


def test_groups_from_wraps_once() -> None:
    assert list(groups_from(3, 5)) == [3, 4, 0, 1, 2]
    assert list(groups_from(7, 5)) == [2, 3, 4, 0, 1]
    assert list(groups_from(0, 1)) == [0]


def test_flex_start() -> None:
    assert flex_start(37, 4) == 32
    assert flex_start(15, 4) == 0
    assert flex_start(5, 0) == 5


def _groups(**overrides: object) -> list[int]:
    args: dict[str, object] = dict(
        is_dir=False, parent_group=0, group_count=64, log_groups_per_flex=4,
        free_inodes=lambda g: 100, free_blocks=lambda g: 1000, used_dirs=lambda g: 0, top_level=False,
    )
    args.update(overrides)
    return list(inode_groups(**args))  # type: ignore[arg-type]


def test_files_start_in_the_parent_group() -> None:
    order = _groups(parent_group=37)
    assert order[0] == 37 and sorted(order) == list(range(64))


def test_deep_directories_stay_in_the_parent_flex_group() -> None:
    order = _groups(is_dir=True, parent_group=37)
    assert order[:16] == list(range(32, 48)) and sorted(order) == list(range(64))


def test_top_level_directories_spread_to_roomy_flex_groups_with_few_directories() -> None:
    used = {g: 5 for g in range(64)}
    for g in range(48, 64):
        used[g] = 0  # flex group 3 has no directories yet
    order = _groups(is_dir=True, top_level=True, used_dirs=lambda g: used[g])
    assert order[0] == 48 and sorted(order) == list(range(64))
    # A flex group without free inodes is never preferred.
    order = _groups(is_dir=True, top_level=True, used_dirs=lambda g: used[g],
                    free_inodes=lambda g: 0 if g >= 48 else 100)
    assert order[0] < 48 and sorted(order) == list(range(64))


def test_spread_hint_varies_ties() -> None:
    firsts = {_groups(is_dir=True, top_level=True, spread_hint=h)[0] for h in range(4)}
    assert firsts == {0, 16, 32, 48}


def test_choose_run_prefers_the_goal() -> None:
    runs = [(0, 10), (20, 100), (200, 5)]
    assert choose_run(runs, 30, 8) == (30, 8)  # inside a run at the goal
    assert choose_run(runs, 115, 8) == (20, 8)  # not enough after the goal in that run: its start
    assert choose_run(runs, 150, 8) == (0, 8)  # nothing long enough after the goal: any run
    assert choose_run(runs, 0, 500) == (20, 100)  # nothing long enough: the longest run
    assert choose_run([], 0, 1) is None


RUNS = st.lists(st.tuples(st.integers(0, 5000), st.integers(1, 300)), min_size=1, max_size=20).map(
    lambda items: _disjoint(items))


def _disjoint(items: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    end = 0
    for start, length in sorted(items):
        start = max(start, end + 1)
        out.append((start, length))
        end = start + length
    return out


@given(RUNS, st.integers(0, 6000), st.integers(1, 400))
def test_choose_run_takes_free_blocks_only(runs: list[tuple[int, int]], goal: int, want: int) -> None:
    start, length = choose_run(runs, goal, want)  # type: ignore[misc]
    assert 1 <= length <= want
    assert any(s <= start and start + length <= s + n for s, n in runs)
    if any(n >= want for _s, n in runs):
        assert length == want  # one run when one is long enough
