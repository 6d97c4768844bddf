"""Replay fuzzer artifacts through a harness and print each as a regression-test blob.

    python fuzz/replay.py HARNESS FILE...

For each FILE: runs the harness's one_input, reports what escaped (if anything), and prints the
exercised image packed with common.pack_blob, ready to paste into tests/corpus/test_fuzz_regressions.py
(for the writer harness, also the options byte the session ran with).
"""

from __future__ import annotations

import importlib
import sys
import traceback
from pathlib import Path

from common import pack_blob


def main(argv: list[str]) -> int:
    harness = importlib.import_module(f"fuzz_{argv[0]}")
    status = 0
    for name in argv[1:]:
        data = Path(name).read_bytes()
        from common import patched_image

        try:
            image = harness.one_input(data)
            print(f"{name}: no escape")
        except Exception:
            status = 1
            print(f"{name}: escaped:\n{traceback.format_exc()}")
            if hasattr(harness, "image_of"):
                image = bytes(harness.image_of(data)[0])
            elif argv[0] == "read_all":
                image = data
            else:
                image = bytes(patched_image(data, harness_key(argv[0]))[0])
        if hasattr(harness, "regression_image"):  # the writer: a slimmer image, and its options byte
            image = harness.regression_image(data)
            print(f"OPTIONS {name} {harness.image_of(data)[1]}")
        print(f"BLOB {name} {pack_blob(image)}")
    return status


def harness_key(harness: str) -> str | list[str]:
    from make_seeds import PATCH_KEYS

    return PATCH_KEYS[harness]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
