#!/usr/bin/env bash
# Where Weir's CPU goes, thread by thread, plain and with the five-plugin
# pipeline: one Weir with both listeners, smtp-source on each in turn, and
# each thread group's CPU time and context switches a message (from
# /proc/PID/task), with smtp-source's own CPU beside them. On a two-core
# host the load generator shares the cores, so its CPU a message is part
# of what sets the rate.
#
#   make plugins && benches/thread-split.sh
# Environment: MESSAGES (16000), SIZE (1024), SESSIONS (20), ROUNDS (2),
# and lib.sh's ONE_PER_SESSION and SPLIT_CORES.
source "$(dirname "$0")/lib.sh"
PLUGINS=$(cd "$(dirname "$0")/../plugins/build" 2>/dev/null && pwd) || { echo "run make plugins first" >&2; exit 1; }
MESSAGES=${MESSAGES:-16000}; SIZE=${SIZE:-1024}; SESSIONS=${SESSIONS:-20}; ROUNDS=${ROUNDS:-2}
PLAIN=$(free_port); PIPE=$(free_port)
start_weir_plain_and_piped "$PLAIN" "$PIPE" "$PLUGINS"

# "group voluntary involuntary user_ticks system_ticks" for each thread
# group (sessions, queue writer, kv writer, epoch ticker, RocksDB's
# flush and compaction threads). The kernel's own
# user/system split (tick-sampled, scaled to the exact total) is printed
# beside the total: a cpu-clock `perf record` on this VM put 18 us a message
# of the pipeline's session time in finish_task_switch, where this split
# shows 6 us more system time than plain, so the two disagree there.
snap() {
  for t in /proc/"$WEIR_PID"/task/*; do
    echo "$(sed 's/-[0-9]*$//' "$t/comm") $(awk '/^voluntary_ctxt/{v=$2} /^nonvoluntary_ctxt/{n=$2} END{print v, n}' "$t/status") $(awk '{print $14, $15}' "$t/stat")"
  done | awk '$1 ~ /sessions|queue|kv|epoch|rocksdb/ {v[$1]+=$2; n[$1]+=$3; u[$1]+=$4; y[$1]+=$5} END {for (k in v) print k, v[k], n[k], u[k], y[k]}' | sort
}

echo "Weir's threads, $SIZE bytes, $SESSIONS sessions, $MESSAGES messages a run; $(versions)"
for p in "$PLAIN" "$PIPE"; do MESSAGES=2000 run "$p" "$SIZE" "$SESSIONS" >/dev/null; done
for _ in $(seq "$ROUNDS"); do
  for mode in plain pipeline; do
    port=$PLAIN; [ "$mode" = pipeline ] && port=$PIPE
    before=$(snap)
    rate=$(SOURCE_CPU="$TMP/source-cpu" run "$port" "$SIZE" "$SESSIONS")
    after=$(snap)
    python3 -c "
u, s = map(float, open('$TMP/source-cpu').read().split()[-2:])
print(f'$mode: $rate msg/s; smtp-source {(u + s) / $MESSAGES * 1e6:.0f} us CPU a message')"
    join <(echo "$before") <(echo "$after") | awk -v m="$MESSAGES" -v hz="$HZ" \
      '{u = ($8-$4)/hz/m*1e6; y = ($9-$5)/hz/m*1e6
        printf "  %-16s %5.1f us CPU (user %5.1f, system %5.1f), %.2f voluntary, %.2f involuntary switches a message\n", $1, u + y, u, y, ($6-$2)/m, ($7-$3)/m}'
  done
done
