#!/usr/bin/env bash
# Run every benchmark; each prints markdown tables and saves JSON under bench/results/.
# Usage: bench/run_all.sh [--quick]   (--quick: fewer runs, for a smoke test)
# Environment: PYEXT4_BENCH_DIR (work directory for trees and images, default /tmp/pyext4-bench;
# needs ~6 GiB), WAIT_QUIET (seconds to wait for a quiet machine before each benchmark, default 300).
set -euo pipefail
cd "$(dirname "$0")"
export PATH="/usr/sbin:/sbin:$PATH"
PY="${PYTHON:-python3}"
WAIT="${WAIT_QUIET:-300}"

if [ "${1:-}" = "--quick" ]; then
    MKFS_RUNS=3; READ_RUNS=1; OTHER_RUNS=1
else
    MKFS_RUNS=9; READ_RUNS=5; OTHER_RUNS=5
fi

"$PY" mkfs.py --runs "$MKFS_RUNS" --wait-quiet "$WAIT"
"$PY" read.py --runs "$READ_RUNS" --wait-quiet "$WAIT"
"$PY" write.py --runs "$OTHER_RUNS" --wait-quiet "$WAIT"
"$PY" populate.py --runs "$(( OTHER_RUNS < 3 ? OTHER_RUNS : 3 ))" --wait-quiet "$WAIT"
"$PY" workdisk.py --runs "$(( OTHER_RUNS + 2 ))" --wait-quiet "$WAIT"
