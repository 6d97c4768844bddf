#!/usr/bin/env bash
# Run one fuzz harness for a while:  fuzz/run.sh HARNESS SECONDS [libFuzzer options...]
#   HARNESS: read_all | superblock | inode_extents | dir_htree | xattr | writer
# (writer is slow: every input runs e2fsck twice; its -timeout is 30 s.)
# Uses the current python when atheris imports there, else a venv in fuzz/work/venv (pip install atheris).
# New interesting inputs go to fuzz/work/corpus/HARNESS; crashes, timeouts and OOMs to
# fuzz/work/crashes/HARNESS (turn each into a regression test: python fuzz/replay.py HARNESS FILE).
set -euo pipefail
cd "$(dirname "$0")"
harness=${1:?usage: fuzz/run.sh HARNESS SECONDS}
seconds=${2:-60}
shift $(( $# >= 2 ? 2 : $# ))
[ -f "fuzz_${harness}.py" ] || { echo "no harness fuzz_${harness}.py" >&2; exit 2; }

py=${PYTHON:-python3}
if ! "$py" -c "import atheris" 2>/dev/null; then
    if [ ! -x work/venv/bin/python ]; then
        mkdir -p work
        "$py" -m venv --system-site-packages work/venv
        work/venv/bin/pip install -q atheris
    fi
    py=work/venv/bin/python
fi
export PATH="/usr/sbin:/sbin:$PATH"
"$py" make_seeds.py
mkdir -p "work/corpus/$harness" "work/crashes/$harness"
max_len=65536
[ "$harness" = read_all ] && max_len=1048576
timeout=5
[ "$harness" = writer ] && timeout=30
exec "$py" "fuzz_${harness}.py" "work/corpus/$harness" "work/seeds/$harness" \
    -max_total_time="$seconds" -timeout="$timeout" -rss_limit_mb=2048 -max_len="$max_len" \
    -artifact_prefix="work/crashes/$harness/" -print_final_stats=1 "$@"
