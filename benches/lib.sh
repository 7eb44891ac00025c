# Shared by the benchmark scripts: a private Postfix instance, ports, CPU
# accounting. Source it; it sets TMP and a cleanup trap.
set -euo pipefail

WEIR=${WEIR:-${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}/release/weir}
[ -x "$WEIR" ] || { echo "no weir binary at $WEIR (run make build)" >&2; exit 1; }
command -v smtp-source >/dev/null || { echo "smtp-source missing (apt-get install postfix)" >&2; exit 1; }

TMP=$(mktemp -d /var/tmp/weir-bench.XXXXXX)
chmod 755 "$TMP"
PF="$TMP/postfix"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  postfix -c "$PF/etc" stop >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT

# SPLIT_CORES=1: the servers (Weir, Postfix) on core 0 alone and
# smtp-source on the other cores, so that a server's own CPU time decides
# its rate; by default all of them share every core.
SERVER_CPUS=() LOAD_CPUS=()
if [ "${SPLIT_CORES:-}" = 1 ]; then
  [ "$(nproc)" -ge 2 ] || { echo "SPLIT_CORES needs two cores" >&2; exit 1; }
  SERVER_CPUS=(taskset -c 0) LOAD_CPUS=(taskset -c "1-$(($(nproc) - 1))")
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HZ=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# wait_port PORT [TRIES]: until something listens on PORT, TRIES times
# 50 ms apart (200: ten seconds), else fail.
wait_port() {
  for _ in $(seq 1 "${2:-200}"); do
    if python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),1)" 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listening on $1" >&2
  [ -f "$TMP/weir.log" ] && tail -5 "$TMP/weir.log" >&2
  exit 1
}

# weir_yaml PORT DATA_DIR [EXTRA_YAML [EXTRA_LISTENERS [BENCH_LISTENER_KEYS]]]:
# a benchmark configuration: the listener `bench` on PORT, data under
# DATA_DIR; EXTRA_YAML adds top-level keys, EXTRA_LISTENERS more listeners,
# BENCH_LISTENER_KEYS more keys of `bench` (such as its pipeline).
# COMMIT_WAIT sets server.commit_wait (e.g. 0, 300us, 1ms).
weir_yaml() {
  local port=$1 data=$2 extra=${3:-} listeners=${4:-} keys=${5:-}
  cat <<YAML
server:
  hostname: bench.local
  data_dir: $data
${COMMIT_WAIT:+  commit_wait: $COMMIT_WAIT}
listeners:
  bench:
    bind: 127.0.0.1:$port
    tls: none
    auth: none
$keys
    limits:
      max_connections_per_ip: 1000
$listeners
relay:
  local_domains: [localhost]
  networks: [127.0.0.0/8]
metrics:
  bind: null
log:
  level: warn
$extra
YAML
}

# start_weir PORT [EXTRA_YAML [EXTRA_LISTENERS]]: Weir on PORT with its data
# under $TMP; EXTRA_YAML adds top-level keys, EXTRA_LISTENERS more listeners.
start_weir() {
  weir_yaml "$1" "$TMP/weir-data" "${2:-}" "${3:-}" > "$TMP/weir.yaml"
  "${SERVER_CPUS[@]}" "$WEIR" serve --config "$TMP/weir.yaml" 2> "$TMP/weir.log" &
  WEIR_PID=$!
  PIDS+=("$WEIR_PID")
  wait_port "$1"
  # Give any extra listeners the same moment.
  sleep 0.5
}

# start_weir_plain_and_piped PLAIN_PORT PIPE_PORT PLUGIN_DIR: one Weir,
# delivery off, with the listener `bench` (no plugins) on PLAIN_PORT and
# `piped` (the five-plugin pipeline, see five_plugins) on PIPE_PORT.
start_weir_plain_and_piped() {
  start_weir "$1" "delivery:
  enabled: false
$(five_plugins "$3")" "$(piped_listener "$2")"
  wait_port "$2"
}

# piped_listener PORT: the YAML of the listener `piped` on PORT, which runs
# the five-plugin pipeline.
piped_listener() {
  cat <<YAML
  piped:
    bind: 127.0.0.1:$1
    tls: none
    auth: none
    pipeline: five
    limits:
      max_connections_per_ip: 1000
YAML
}

# start_postfix PORT [RELAYHOST]: a private Postfix instance (the system's is
# not touched). Without RELAYHOST, accepted mail is put on hold; with it,
# mail is relayed there.
start_postfix() {
  local port=$1 relayhost=${2:-}
  mkdir -p "$PF/etc" "$PF/queue" "$PF/data"
  cp /etc/postfix/master.cf "$PF/etc/master.cf"
  # One smtpd on our port, nothing chrooted; everything else as Debian ships it.
  sed -i -E "s/^smtp +inet .*/127.0.0.1:$port inet n - n - - smtpd/" "$PF/etc/master.cf"
  sed -i -E "s/^(smtp|relay) +unix +- +- +y/\1 unix - - n/" "$PF/etc/master.cf"
  cat > "$PF/etc/main.cf" <<CF
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
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
default_process_limit = 200
maillog_file = $PF/maillog
maillog_file_prefixes = $PF
CF
  if [ -n "$relayhost" ]; then
    echo "relayhost = $relayhost" >> "$PF/etc/main.cf"
  else
    echo "smtpd_end_of_data_restrictions = check_client_access static:HOLD" >> "$PF/etc/main.cf"
  fi
  chown postfix:postfix "$PF/data"
  postfix -c "$PF/etc" set-permissions >/dev/null 2>&1 || true
  if ! "${SERVER_CPUS[@]}" postfix -c "$PF/etc" start >"$TMP/postfix-start.log" 2>&1; then
    echo "Postfix did not start:" >&2; cat "$TMP/postfix-start.log" "$PF/maillog" >&2; exit 1
  fi
  wait_port "$port"
}

# run PORT (smtp-source -d, $MESSAGES messages to postmaster@localhost) SIZE SESSIONS -> prints messages/second
# With ONE_PER_SESSION=1, every message has its own connection (no -d), as
# most inbound MX traffic does.
# With SOURCE_CPU=FILE, smtp-source's own user and system seconds ("U S")
# are written to FILE.
run() {
  local port=$1 size=$2 sessions=$3 start end reuse=-d timed=()
  [ "${ONE_PER_SESSION:-}" = 1 ] && reuse=
  [ -n "${SOURCE_CPU:-}" ] && timed=(/usr/bin/time -o "$SOURCE_CPU" -f "%U %S")
  start=$(date +%s.%N)
  "${LOAD_CPUS[@]}" "${timed[@]}" smtp-source $reuse -s "$sessions" -m "$MESSAGES" -l "$size" -f bench@example.org \
    -t postmaster@localhost -M bench.client "127.0.0.1:$port" >/dev/null
  end=$(date +%s.%N)
  python3 -c "print(f'{$MESSAGES / ($end - $start):.0f}')"
}

versions() {
  echo "weir: $("$WEIR" --version), postfix: $(postconf -d -h mail_version), $(nproc) cores, queues on $(df --output=source "$TMP" | tail -1)"
}

# five_plugins PLUGIN_DIR: the `plugins:` and `pipelines:` YAML of the
# benchmarks' five-plugin pipeline `five`: conn-guard (connect, helo),
# sender-guard (mail_from), rcpt-guard (rcpt_to, keeps per-session state),
# stamp (data: reads the body, counts in kv, edits headers) and router
# (route); with PIPELINE=noop, five plugins that only say continue.
five_plugins() {
  local d=$1
  if [ "${PIPELINE:-}" = noop ]; then
    printf 'plugins:\n'
    for p in conn sender rcpt stamp router; do printf '  %s: {path: %s/test_noop.wasm}\n' "$p" "$d"; done
  else
    cat <<YAML
plugins:
  conn: {path: $d/test_conn_guard.wasm, grants: [config, tags], config: {deny_helos: [bad.example]}}
  sender: {path: $d/test_sender_guard.wasm, grants: [config, log], config: {blocked_senders: [spam@example.net]}}
  rcpt: {path: $d/test_rcpt_guard.wasm, grants: [symbols, route]}
  stamp: {path: $d/test_stamp.wasm, grants: [body, kv, headers, tags]}
  router: {path: $d/test_router.wasm}
YAML
  fi
  cat <<YAML
pipelines:
  five:
    connect: [{plugin: conn}]
    helo: [{plugin: conn}]
    mail_from: [{plugin: sender}]
    rcpt_to: [{plugin: rcpt}]
    data: [{plugin: stamp}]
    route: [{plugin: router}]
YAML
}
