#!/usr/bin/env bash
# benches/idle-heap.sh — where the heap of an idle MQTT connection goes (issue 18): runs the
# release broker under valgrind's DHAT, opens N idle connections (default 2,000), and prints
# the bytes live at the peak per connection by allocation site. RSS per connection adds the
# allocator's overhead and the kernel's socket buffers are not in it.
#
#   benches/idle-heap.sh [N] [BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000}
BIN=${2:-${CARGO_TARGET_DIR:-target}/release/dataloom}
. benches/dhat-broker.sh
ulimit -n $((N + 1000))
d=$(mktemp -d)
dhat_start "$BIN" "$d"
python3 benches/idle_heap.py connect "$PORT" "$N" 3
kill -TERM "$PID"
wait "$PID" || true
python3 benches/idle_heap.py report "$d/dhat.json" "$N"
rm -rf "$d"
