#!/usr/bin/env bash
# Makes this checkout's own packages build from this checkout when another
# checkout built last in the shared CARGO_TARGET_DIR (a CI clone, a second
# worktree).
#
# Why: cargo names a workspace package's artifacts by its path inside the
# workspace, not by where the checkout is, and calls them fresh when no
# source file is newer than the last build. After another checkout built,
# its artifacts therefore pass for this one's wherever this checkout's
# files are older than that build, even where they differ; and they hold
# that checkout's paths (`env!("CARGO_MANIFEST_DIR")`, the binary's default
# plugin directory), so tests ran the other checkout's scripts and
# policies, or failed on a directory that no longer exists.
#
# What: the path of the checkout whose `make` set-up ran last is kept in
# $CARGO_TARGET_DIR/.weir-checkout (a bare `cargo build` elsewhere does not
# update it). When it is another one (or unknown),
# the artifacts of this repository's own packages (the server, weir-spam,
# the SDK, the plugins; native and wasm32-wasip2) are removed, so they are
# rebuilt from here; dependencies (RocksDB, wasmtime, ...) stay cached.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:?set CARGO_TARGET_DIR (the Makefile does)}"
CARGO=${CARGO:-cargo}
stamp="$CARGO_TARGET_DIR/.weir-checkout"
here=$(pwd -P)

[ "$(cat "$stamp" 2>/dev/null || true)" = "$here" ] && exit 0

if [ -d "$CARGO_TARGET_DIR" ]; then
  echo "claim-target: $CARGO_TARGET_DIR was last built from $(cat "$stamp" 2>/dev/null || echo 'an unknown checkout'); this checkout's own packages will be rebuilt"
  # Package names of a workspace's members, as `-p NAME` arguments.
  members() {
    "$CARGO" metadata --no-deps --format-version 1 --manifest-path "$1" |
      python3 -c 'import json, sys; print(" ".join("-p " + p["name"] for p in json.load(sys.stdin)["packages"]))'
  }
  # shellcheck disable=SC2046 # one word per argument
  "$CARGO" clean -q --release $(members Cargo.toml)
  plugins=$(members plugins/Cargo.toml)
  # shellcheck disable=SC2086
  "$CARGO" clean -q --release --manifest-path plugins/Cargo.toml $plugins -p weir-plugin-sdk
  # shellcheck disable=SC2086
  "$CARGO" clean -q --release --manifest-path plugins/Cargo.toml --target wasm32-wasip2 $plugins -p weir-plugin-sdk
  "$CARGO" clean -q --release --manifest-path sdk/Cargo.toml -p weir-plugin-sdk
fi
mkdir -p "$CARGO_TARGET_DIR"
echo "$here" > "$stamp"
