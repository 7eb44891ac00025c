#!/usr/bin/env bash
# Accept-rate benchmark: Weir against Debian's Postfix on the same machine, in
# one run, under the same load from Postfix's smtp-source.
#
#   benches/accept-rate.sh            (or: make bench)
#
# Both servers sync a message to disk before their 250: Weir's queue is a
# RocksDB WAL fsync'd per group commit; Postfix fsyncs each queue file. Both
# queues live under the same temporary directory (same disk). Postfix puts
# what it accepts on hold (an access rule HOLD) and Weir runs with delivery
# off, so neither delivers during the run. Loads: 1 KB and 10 KB messages,
# 20 and 100 sessions, connections reused (smtp-source -d).
# Environment: MESSAGES (default 4000 per cell), SIZES, SESSIONS, WEIR.
#
# Prints a table: messages/second for each, the ratio, and Weir's CPU time per
# message (user+system of the weir process over the cell, from /proc).
source "$(dirname "$0")/lib.sh"
MESSAGES=${MESSAGES:-4000}
SIZES=${SIZES:-"1024 10240"}
SESSIONS=${SESSIONS:-"20 100"}

WEIR_PORT=$(free_port)
PF_PORT=$(free_port)
start_weir "$WEIR_PORT" "delivery:
  enabled: false"
start_postfix "$PF_PORT"

echo "Accept rate, smtp-source -d, $MESSAGES messages per cell; $(versions)"
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
