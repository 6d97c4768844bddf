"""Inputs the fuzzers (fuzz/) found that once let something other than an Ext4Error escape.

Each case is the exercised image (zlib + base64, from `python fuzz/replay.py HARNESS FILE`) and
what went wrong; the test runs it through the same exercise as the harness, with every verify mode.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fuzz"))

import common  # noqa: E402  (fuzz/common.py)

CASES = [
    (
        "read_all-isize-2^64",
        "a file's i_size near 2^64: BufferedReader.seek raised ValueError (now CorruptError: larger "
        "than any file of the filesystem)",
        "eNrt2U+LG2UYAPBkd4s1VVu1gtKDL3izbZLGdWlXelixYGW7lXar9JidTJqBbCYkk/4BD/UrePLkoYgH8RsoVUR68qR+APFetLQWD8L6Jpsta/WiUq3s7wfPks0+mfdPnmeSmS2VgJ1qX4xWjF0xVmLMxShvTwibMc77vnTr5M8xyqUDpbM/lid5b9z86WRp5eYkdet1e2JcjXE0xsz0+a8/vXvqxluv7/ro4I2N5IMD7/0Xa32u1frq2jfL3167+9n7Hzd+vbN9nZN1PABlJcZDbHba85v9Pxf7dc6mwA6xsfH8vce/bAA7yl5bADvV9uvfrfg3v3/cXLp+fHzJ8UPp1snb0xg/f/347OTewZZHfFXjAbj6bvxRn5v7Y/2Xf1d/f8d+2/vQ+2Jp/P7/2flvpvTstrzdMR6NUZne33wsxuMxnoixd3of9ckYT8V4+i+M/2Gsv0/KpdLt+85/99ffM/9gje/s/vzLe5d7E/u88UyrfFzL5ZnqvcczM9XqZo3vL1VmuvmwONjOR73WZs1/NztXXs+Llp2D/7899/X/ndnN/gd2CP/yA/0/lTRsCfj8B/Q/oP8B/Q/of0D/A/of0P+A/gcAHkbLWW90OSTdfDgapKFRXai+VD88SBqH6/V6o374QjN9uTHfrocXGgvh7Kk3w+ooDUv9QTgyHxpHFucXFuePhROvrYZGvX4sZAtHFyqV1U4a+oP8wqC5PgxZL+mOWmkrXMqKTijin86tjXrFKAyvDIt0PTTjqO1BmoZh3i4uxd9eqYyT0svNpAitbFgMsrVRkeW9UKSDeLx2PghpM+lsjTA5QCsdJjEvjpL1xmNUsl4ru5i1Rs1uaGfddDyNUBsNB7VhJ+bXWnlSe7GW5P0rg+xCp6hWKtNJJfl6TJ5MdenVs6eXz62eWD4fVk6Ht5fOnFlaWT1/KBR52JxgkfaK0I+Tyooijrx2pdLs97tZ0lzrpqHbvBSPupqHZpKkw2HI2+0syeJ0pgPFGYzW4wGa46UdCv1u2hym4WI2zIrFSqco+ou1Wift9qujSX41TqxWUa0AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAALAz/AZt/NzE",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("verify", ["off", "warn", "strict"])
def test_fuzz_regression(case: tuple[str, str, str], verify: str) -> None:
    _name, _what, blob = case
    image = common.unpack_blob(blob)
    common.exercise(image, verify=verify, lookups=["/dir/file", "/fast", "/slow", "/htree/x"])
