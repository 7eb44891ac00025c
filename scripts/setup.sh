#!/usr/bin/env bash
# Installs what this machine lacks to build and test Weir, and nothing else:
#  - Debian packages: clang + libclang (RocksDB is built from source and its
#    bindings need libclang), Postfix (smtp-source/smtp-sink for tests and
#    the benchmark), swaks with libnet-ssleay-perl (its TLS, only a
#    "Recommends" of the package), python3 (smtplib), python3-aiosmtpd (an LMTP
#    server for delivery tests, run with /usr/bin/python3), python3-dkim and
#    python3-nacl (an independent DKIM verifier, RSA and Ed25519), openssl
#    (test signing keys), dnsmasq-base
#    (a DNS server on loopback serving test MX records), time (GNU time:
#    the load generator's own CPU in benches/thread-split.sh), valgrind
#    (benches/instructions.sh counts instructions a message with callgrind).
#  - the wasm32-wasip2 Rust target (plugins are built for it).
# Safe to run again: it only calls apt-get when a package is missing.
set -euo pipefail

need=()
for pkg in clang libclang-dev postfix swaks libnet-ssleay-perl python3 python3-aiosmtpd python3-dkim python3-nacl openssl dnsmasq-base time valgrind; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    need+=("$pkg")
  fi
done

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  # Postfix must not ask questions or start a system instance on port 25.
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

if command -v rustup >/dev/null 2>&1; then
  if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "setup: adding the wasm32-wasip2 target"
    rustup target add wasm32-wasip2
  fi
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "setup: cargo-nextest not found; tests will run with cargo test"
fi
