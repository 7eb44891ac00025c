#!/usr/bin/env bash
# Accept-rate benchmark: Weir against Debian's Postfix on the same machine, in
# one run, under the same load from Postfix's smtp-source.
#
#   benches/accept-rate.sh [path/to/weir]        (or: make bench)
#
# Both servers sync a message to disk before their 250: Weir's queue is a
# RocksDB WAL fsync'd per group commit; Postfix fsyncs each queue file. Both
# queues live under the same temporary directory (same disk). Postfix puts
# what it accepts on hold (an access rule HOLD), so neither delivers during
# the run. Loads: 1 KB and 10 KB messages, 20 and 100 sessions, connections
# reused (smtp-source -d). Environment: MESSAGES (default 4000 per cell).
#
# Prints a table: messages/second for each, the ratio, and Weir's CPU time per
# message (user+system of the weir process over the cell, from /proc).
set -euo pipefail

WEIR=${1:-${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}/release/weir}
MESSAGES=${MESSAGES:-4000}
SIZES=${SIZES:-"1024 10240"}
SESSIONS=${SESSIONS:-"20 100"}
[ -x "$WEIR" ] || { echo "no weir binary at $WEIR (run make build)" >&2; exit 1; }
command -v smtp-source >/dev/null || { echo "smtp-source missing (apt-get install postfix)" >&2; exit 1; }

TMP=$(mktemp -d /var/tmp/weir-bench.XXXXXX)
chmod 755 "$TMP"
WEIR_PID=""
PF="$TMP/postfix"
cleanup() {
  [ -n "$WEIR_PID" ] && kill "$WEIR_PID" 2>/dev/null && wait "$WEIR_PID" 2>/dev/null || true
  postfix -c "$PF/etc" stop >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WEIR_PORT=$(free_port)
PF_PORT=$(free_port)
HZ=$(getconf CLK_TCK)

# --- Weir ---------------------------------------------------------------
cat > "$TMP/weir.yaml" <<EOF
server:
  hostname: bench.local
  data_dir: $TMP/weir-data
listeners:
  bench:
    bind: 127.0.0.1:$WEIR_PORT
    tls: none
    auth: none
    limits:
      max_connections_per_ip: 1000
relay:
  local_domains: [localhost]
metrics:
  bind: null
log:
  level: warn
EOF
"$WEIR" serve --config "$TMP/weir.yaml" 2> "$TMP/weir.log" &
WEIR_PID=$!

# --- Postfix (a private instance; the system's is not touched) ----------
mkdir -p "$PF/etc" "$PF/queue" "$PF/data"
cp /etc/postfix/master.cf "$PF/etc/master.cf"
# One smtpd on our port, not chrooted; everything else as Debian ships it.
sed -i -E "s/^smtp +inet .*/127.0.0.1:$PF_PORT inet n - n - - smtpd/" "$PF/etc/master.cf"
sed -i -E "s/^(smtp|relay) +unix +- +- +y/\1 unix - - n/" "$PF/etc/master.cf"
cat > "$PF/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $PF/queue
data_directory = $PF/data
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.local
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_recipient_restrictions = permit_mynetworks, reject
smtpd_end_of_data_restrictions = check_client_access static:HOLD
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
default_process_limit = 200
maillog_file = $PF/maillog
maillog_file_prefixes = $PF
EOF
chown postfix:postfix "$PF/data"
postfix -c "$PF/etc" set-permissions >/dev/null 2>&1 || true
if ! postfix -c "$PF/etc" start >"$TMP/postfix-start.log" 2>&1; then
  echo "Postfix did not start:" >&2; cat "$TMP/postfix-start.log" "$PF/maillog" >&2; exit 1
fi

wait_port() {
  for _ in $(seq 1 200); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),1)" 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listening on $1" >&2; exit 1
}
wait_port "$WEIR_PORT"
wait_port "$PF_PORT"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run PORT SIZE SESSIONS -> prints messages/second
run() {
  local port=$1 size=$2 sessions=$3
  local start end
  start=$(date +%s.%N)
  smtp-source -d -s "$sessions" -m "$MESSAGES" -l "$size" -f bench@example.org \
    -t postmaster@localhost -M bench.client "127.0.0.1:$port" >/dev/null
  end=$(date +%s.%N)
  python3 -c "print(f'{$MESSAGES / ($end - $start):.0f}')"
}

echo "Accept rate, smtp-source -d, $MESSAGES messages per cell, $(nproc) cores, queue dir on $(df --output=source "$TMP" | tail -1)"
echo "weir: $("$WEIR" --version), postfix: $(postconf -d -h mail_version)"
echo
printf '| %-7s | %-8s | %-10s | %-13s | %-6s | %-15s |\n' size sessions "weir msg/s" "postfix msg/s" ratio "weir CPU/msg"
printf '|---------|----------|------------|---------------|--------|-----------------|\n'
for size in $SIZES; do
  for sessions in $SESSIONS; do
    # Warm-up so neither side pays first-connection costs inside the measurement.
    MESSAGES=200 run "$WEIR_PORT" "$size" "$sessions" >/dev/null
    MESSAGES=200 run "$PF_PORT" "$size" "$sessions" >/dev/null
    c0=$(cpu_ticks "$WEIR_PID")
    w=$(run "$WEIR_PORT" "$size" "$sessions")
    c1=$(cpu_ticks "$WEIR_PID")
    p=$(run "$PF_PORT" "$size" "$sessions")
    ratio=$(python3 -c "print(f'{$w / $p:.2f}x')")
    cpu=$(python3 -c "print(f'{($c1 - $c0) / $HZ / $MESSAGES * 1e6:.0f} us')")
    printf '| %-7s | %-8s | %-10s | %-13s | %-6s | %-15s |\n' "$((size / 1024)) KB" "$sessions" "$w" "$p" "$ratio" "$cpu"
  done
done
held=$(find "$PF/queue/hold" -type f | wc -l)
queued=$("$WEIR" queue list --json --config "$TMP/weir.yaml" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
echo
echo "check: postfix holds $held messages, weir queued $queued"
