# Tessera — the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Keep cargo's build cache outside the clone so repeated runs rebuild only what changed.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/tessera/target
CARGO ?= cargo
BIN := $(CARGO_TARGET_DIR)/debug
DEV_DIR ?= .tessera-dev

.PHONY: help build run demo test fmt fmt-check clippy unit e2e check-deps deps clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

deps: ## Install what the build needs (Rust toolchain components)
	@command -v cargo >/dev/null || { echo "cargo not found: install Rust from rustup.rs" >&2; exit 1; }
	@rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy

build: ## Build tesserad and tessera
	$(CARGO) build --locked --bins

$(DEV_DIR)/tesserad.toml:
	$(BIN)/tessera dev init --dir $(DEV_DIR)

run: build ## Start the broker on 127.0.0.1:7443 with the embedded store and a dev PKI
	@$(MAKE) --no-print-directory $(DEV_DIR)/tesserad.toml
	@echo
	@echo "Tessera is starting on https://127.0.0.1:7443 (embedded store, dev PKI in $(DEV_DIR))."
	@echo "In a second terminal, walk through the demo with:   make demo"
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

check-deps: ## Fail if aws-lc-rs sneaks in (rustls must use ring; see STACK-NOTES)
	@if $(CARGO) tree --locked -i aws-lc-rs >/dev/null 2>&1; then \
		echo "aws-lc-rs is in the dependency tree: rustls/jsonwebtoken must use ring/rust_crypto only" >&2; exit 1; fi

test: deps fmt-check check-deps clippy ## Everything CI checks: fmt, deps, clippy, unit and end-to-end tests
	$(CARGO) build --locked --workspace --bins
	$(CARGO) test --locked --workspace

clean:
	$(CARGO) clean
	rm -rf $(DEV_DIR)
