#!/usr/bin/env bash
# benches/run.sh — what `make bench` runs: builds the release binaries, installs what is missing
# (Mosquitto from Debian, rumqttd 0.20.0 from crates.io into target/bench-tools, taskset), raises
# the open-file limit and runs the load generator (crates/bench). The binaries are taken from
# $CARGO_TARGET_DIR/release when CARGO_TARGET_DIR is set (target/release otherwise).
#
#   QUICK=1 benches/run.sh              short run for development
#   benches/run.sh --scenarios fanout   any dataloom-bench flags (see --help)
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO=${CARGO:-cargo}
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
TOOLS=target/bench-tools
RUMQTTD_VERSION=0.20.0
# Where cargo puts the release binaries (CARGO_TARGET_DIR if set, as cargo does).
BIN=${CARGO_TARGET_DIR:-target}/release

apt_install() {
  $SUDO apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1 ||
    { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y --no-install-recommends "$@"; }
}

echo "bench: building release binaries"
$CARGO build --release -p dataloom -p dataloom-bench

if [ ! -x /usr/sbin/mosquitto ]; then
  echo "bench: installing mosquitto"
  apt_install mosquitto
  # The package may start its own service on :1883; the bench runs its own instances.
  { $SUDO systemctl disable --now mosquitto || $SUDO service mosquitto stop; } >/dev/null 2>&1 || true
fi

if ! "$TOOLS/bin/rumqttd" --version 2>/dev/null | grep -q "$RUMQTTD_VERSION"; then
  echo "bench: installing rumqttd $RUMQTTD_VERSION into $TOOLS (takes a few minutes once)"
  $CARGO install "rumqttd@$RUMQTTD_VERSION" --root "$TOOLS"
fi

command -v taskset >/dev/null || { echo "bench: installing util-linux (taskset)"; apt_install util-linux; }

# 10,000 idle connections need as many descriptors here and in each broker (which inherit it).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

ARGS=()
case "${QUICK:-}" in "" | 0 | no | false) ;; *) ARGS+=(--quick) ;; esac
# A broken broker must not hang the run: each run has its own limit, this bounds the whole.
exec timeout -k 10 2400 "$BIN/dataloom-bench" "${ARGS[@]}" "$@"
