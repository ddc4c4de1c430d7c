#!/bin/sh
# Fuzzes the HTTP state API against its OpenAPI document (docs/openapi.json) with schemathesis:
# starts the broker (memory store, free ports, in a scratch directory), runs a bounded number of
# examples per operation, stops the broker. schemathesis lives in a project-local virtualenv
# (target/venv), installed from PyPI on first use. `make test` runs this; EXAMPLES sizes it.
# `/v1/events` is left out: it is a stream that stays open, which schemathesis would wait on
# until its timeout for every example; tests/console.rs checks it.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${DATALOOM_BIN:-$root/target/debug/dataloom}
venv=$root/target/venv
examples=${EXAMPLES:-50}
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet 'schemathesis>=4,<5'
fi
tmp=$(mktemp -d)
(cd "$tmp" && exec "$bin" serve --storage memory --bind 127.0.0.1:0 --http-bind 127.0.0.1:0 >"$tmp/out" 2>"$tmp/err") &
pid=$!
trap 'kill "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT INT TERM
addr=""
for _ in $(seq 100); do
  addr=$(sed -n 's|^dataloom listening on http://||p' "$tmp/out")
  [ -n "$addr" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$tmp/err" >&2; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { echo "broker did not start" >&2; exit 1; }
cd "$tmp"
"$venv/bin/schemathesis" run "http://$addr/v1/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "$examples" --phases examples,coverage,fuzzing --workers 1 --no-color \
  --exclude-path /v1/events
