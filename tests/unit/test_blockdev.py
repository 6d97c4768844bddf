"""FileDevice's vectored writes: many buffers, one call per IOV_MAX of them, sizes and counters kept."""

from __future__ import annotations

import os
from pathlib import Path

from pyext4.blockdev import FileDevice, _iov_max


def test_pwritev_writes_more_buffers_than_one_call_takes(tmp_path: Path) -> None:
    path = tmp_path / "dev.img"
    path.write_bytes(b"")
    buffers = [bytes([i % 251]) * (i % 7 + 1) for i in range(2 * _iov_max() + 5)]
    buffers[3] = memoryview(b"view")  # any buffer, not only bytes
    with FileDevice.open(path, writable=True) as dev:
        dev.pwritev(100, buffers)
        assert dev.size == 100 + sum(map(len, buffers))
        assert dev.bytes_written == sum(map(len, buffers))
    assert path.read_bytes() == bytes(100) + b"".join(buffers)


def test_pwritev_inside_a_file_keeps_its_size(tmp_path: Path) -> None:
    path = tmp_path / "dev.img"
    path.write_bytes(b"-" * 64)
    with FileDevice.open(path, writable=True) as dev:
        dev.pwritev(8, [b"ab", b"", b"cd"])
        assert dev.size == 64
    assert path.read_bytes() == b"-" * 8 + b"abcd" + b"-" * 52
    assert os.path.getsize(path) == 64
