# Weir — two commands on a fresh machine:
#   make run    set up, build, run the server on the embedded default
#   make test   set up, build, run the whole suite
#
# Everything (server, tests, benchmarks) builds with one cargo profile
# (--release), so RocksDB and the other heavy dependencies compile once
# (`make dist`, the binary to install, has a profile of its own).
# The target directory lives outside the clone so every checkout and CI run
# on this machine shares one incremental cache.

CARGO_TARGET_DIR ?= $(HOME)/.cache/weir/target
export CARGO_TARGET_DIR
CARGO ?= cargo
PROFILE := --release
WEIR := $(CARGO_TARGET_DIR)/release/weir

.PHONY: all setup build dist plugins run test check bench clean-data spam-model spam-report

# The labelled corpus the shipped spam model is trained and measured on.
SPAM_CORPUS ?= ../shared/corpus/spamassassin

all: build

# Debian packages and the wasm target (scripts/setup.sh); then, if another
# checkout built last in the shared target directory, this checkout's own
# packages are cleaned so they build from here (scripts/claim-target.sh).
setup:
	@scripts/setup.sh
	@scripts/claim-target.sh

build: setup plugins
	$(CARGO) build $(PROFILE) --workspace --bins

# The binary to install: the `dist` profile (fat LTO; see Cargo.toml), in
# $(CARGO_TARGET_DIR)/dist/weir. Not used by run, test or bench.
dist: setup plugins
	$(CARGO) build --profile dist --bin weir

# Every plugin in the repo, as WebAssembly components (wasm32-wasip2).
plugins: setup
	cd plugins && $(CARGO) build --target wasm32-wasip2 --release
	@mkdir -p plugins/build
	@cp $(CARGO_TARGET_DIR)/wasm32-wasip2/release/*.wasm plugins/build/
	@cp plugins/spam-score/model/spamassassin.model plugins/build/spam-score.model

# Retrain the shipped spam model on the whole corpus.
spam-model: build
	$(WEIR) spam train --ham $(SPAM_CORPUS)/ham --spam $(SPAM_CORPUS)/spam -o plugins/spam-score/model/spamassassin.model

# Spam recall and ham false positives on a seeded 80/20 split, as a table.
spam-report: build
	$(WEIR) spam eval --seed 42 --ham $(SPAM_CORPUS)/ham --spam $(SPAM_CORPUS)/spam

# WEIR_PLUGIN_DIR: this checkout's plugins, whichever checkout sharing the
# target directory last linked the binary (the default is the source tree
# the binary was built from).
run: build
	WEIR_PLUGIN_DIR=$(CURDIR)/plugins/build $(WEIR) serve

test: build
	@if command -v cargo-nextest >/dev/null 2>&1; then \
		$(CARGO) nextest run $(PROFILE) --workspace --no-fail-fast; \
	else \
		$(CARGO) test $(PROFILE) --workspace --no-fail-fast; \
	fi
	# Plugins' own tests, natively, through the SDK's harness; the SDK's own.
	$(CARGO) test --manifest-path plugins/Cargo.toml --release
	$(CARGO) test --manifest-path sdk/Cargo.toml --release --lib

check:
	$(CARGO) check $(PROFILE) --workspace --all-targets

bench: build
	$(CARGO) bench --bench plugin_call
	WEIR=$(WEIR) benches/accept-rate.sh
	WEIR=$(WEIR) benches/relay-throughput.sh
	WEIR=$(WEIR) benches/plugin-accept-rate.sh

clean-data:
	rm -rf ./data
