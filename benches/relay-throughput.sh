#!/usr/bin/env bash
# End-to-end relay throughput: smtp-source -> server -> smtp-sink, for Weir
# and for Debian's Postfix relaying to its own smtp-sink, on the same machine
# in the same run. A cell's time runs from the first connection of
# smtp-source until its sink has received every message (smtp-sink -M N
# exits then), so it covers accepting, syncing to the queue, scheduling and
# delivering. Both relay with up to 20 connections to the sink.
#
#   benches/relay-throughput.sh      (or: make bench)
# Environment: MESSAGES (default 4000), SIZES (default 1024 10240), SESSIONS (20 100).
source "$(dirname "$0")/lib.sh"
MESSAGES=${MESSAGES:-4000}
SIZES=${SIZES:-"1024 10240"}
SESSIONS=${SESSIONS:-"20 100"}

WEIR_PORT=$(free_port); WEIR_SINK=$(free_port)
PF_PORT=$(free_port); PF_SINK=$(free_port)
start_weir "$WEIR_PORT" "delivery:
  max_per_destination: 20
  max_concurrency: 200
routes:
  sink:
    type: relay
    host: 127.0.0.1
    port: $WEIR_SINK
    tls: none
routing:
  default: sink"
start_postfix "$PF_PORT" "[127.0.0.1]:$PF_SINK"

# relay PORT SINKPORT SIZE SESSIONS COUNT -> prints messages/second end to end
relay() {
  local port=$1 sink=$2 size=$3 sessions=$4 count=$5 start end
  smtp-sink -u nobody -M "$count" "127.0.0.1:$sink" 256 &
  local sink_pid=$!
  wait_port "$sink"
  start=$(date +%s.%N)
  smtp-source -d -s "$sessions" -m "$count" -l "$size" -f bench@example.org \
    -t user@remote.example -M bench.client "127.0.0.1:$port" >/dev/null
  wait "$sink_pid"
  end=$(date +%s.%N)
  python3 -c "print(f'{$count / ($end - $start):.0f}')"
}

echo "Relay throughput, smtp-source -d -> server -> smtp-sink, $MESSAGES messages per cell; $(versions)"
echo
printf '| %-7s | %-8s | %-10s | %-13s | %-6s | %-15s |\n' size sessions "weir msg/s" "postfix msg/s" ratio "weir CPU/msg"
printf '|---------|----------|------------|---------------|--------|-----------------|\n'
for size in $SIZES; do
  for sessions in $SESSIONS; do
    relay "$WEIR_PORT" "$WEIR_SINK" "$size" "$sessions" 200 >/dev/null
    relay "$PF_PORT" "$PF_SINK" "$size" "$sessions" 200 >/dev/null
    sleep 1
    c0=$(cpu_ticks "$WEIR_PID")
    w=$(relay "$WEIR_PORT" "$WEIR_SINK" "$size" "$sessions" "$MESSAGES")
    c1=$(cpu_ticks "$WEIR_PID")
    p=$(relay "$PF_PORT" "$PF_SINK" "$size" "$sessions" "$MESSAGES")
    ratio=$(python3 -c "print(f'{$w / $p:.2f}x')")
    cpu=$(python3 -c "print(f'{($c1 - $c0) / $HZ / $MESSAGES * 1e6:.0f} us')")
    printf '| %-7s | %-8s | %-10s | %-13s | %-6s | %-15s |\n' "$((size / 1024)) KB" "$sessions" "$w" "$p" "$ratio" "$cpu"
  done
done
left=$("$WEIR" queue list --json --config "$TMP/weir.yaml" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
echo
echo "check: weir queue left with $left messages; postfix: $(postqueue -c "$PF/etc" -p | tail -1)"
echo "(one per smtp-sink run, for both: smtp-sink -M exits on its last message before acknowledging it)"
