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
command -v valgrind >/dev/null || { apt-get install -y valgrind >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y valgrind >/dev/null; }; }
ulimit -n $((N + 1000))
d=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf '[listeners.tcp]\nbind = "127.0.0.1:%s"\n[http]\nbind = "127.0.0.1:0"\n[storage]\ndata_dir = "%s/data"\n' "$port" "$d" >"$d/c.toml"
valgrind --tool=dhat --dhat-out-file="$d/dhat.json" "$BIN" serve --config "$d/c.toml" >"$d/log" 2>&1 &
pid=$!
for _ in $(seq 300); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.2; done
python3 benches/idle_heap.py connect "$port" "$N" 3
kill -TERM "$pid"
wait "$pid" || true
python3 benches/idle_heap.py report "$d/dhat.json" "$N"
rm -rf "$d"
