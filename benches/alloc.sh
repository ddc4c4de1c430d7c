#!/usr/bin/env bash
# benches/alloc.sh — heap bytes and allocations per delivery of a v5 message with 8 user
# properties, for 1, 10 and 100 subscribers (issue 18). Runs the release broker under
# valgrind's DHAT twice per subscriber count, with M and 2M messages, and divides the
# difference by the extra deliveries, so start-up and connections cancel out.
#
#   benches/alloc.sh [BINARY]     (default target/release/dataloom; `make bench-alloc`)
#
# Needs valgrind (apt) and paho-mqtt in target/venv (`make test-deps`).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-${CARGO_TARGET_DIR:-target}/release/dataloom}
PY=${PY:-target/venv/bin/python}
. benches/dhat-broker.sh
[ -x "$PY" ] || make test-deps-clients >/dev/null

# run NS M -> "bytes blocks" allocated over the whole run
run() {
  local d
  d=$(mktemp -d)
  dhat_start "$BIN" "$d"
  "$PY" benches/alloc_driver.py "$PORT" "$1" "$2" >/dev/null
  kill -TERM "$PID"
  wait "$PID" || true
  sed -n 's/.*Total: *\([0-9,]*\) bytes in \([0-9,]*\) blocks.*/\1 \2/p' "$d/log" | tr -d ,
  rm -rf "$d"
}

printf '%-12s %-12s %-18s %s\n' subscribers deliveries "bytes/delivery" "allocations/delivery"
for ns in 1 10 100; do
  m=$((20000 / ns)); m=$(( m < 40 ? 40 : m )); m=$(( m / 20 * 20 ))
  read -r b1 n1 < <(run "$ns" "$m")
  read -r b2 n2 < <(run "$ns" $((2 * m)))
  extra=$((m * ns))
  printf '%-12s %-12s %-18s %s\n' "$ns" "$extra" "$(( (b2 - b1) / extra ))" \
    "$(python3 -c "print(f'{($n2 - $n1) / $extra:.2f}')")"
done
