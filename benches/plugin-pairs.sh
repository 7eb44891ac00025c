#!/usr/bin/env bash
# Many plain/pipeline pairs at one cell of the plugin accept-rate benchmark,
# every run logged: for judging the ">= 0.8x plain" goal on a host whose
# rates move by +-20% from one run to the next. One Weir with both
# listeners (lib.sh); the runs alternate, every other pair with the
# pipeline first (so that a drift over the run cannot favour either).
#
# For each run: its rate, and Weir's CPU a message split into user and
# system time and the share of RocksDB's own threads (a compaction that
# falls in a run takes its CPU from that run, which makes the widest
# outliers). Then the median pair ratio and the ratio of the mean rates,
# each with a bootstrap 95% interval over the pairs, and how many pairs
# fell below 0.8x.
#
#   make plugins && benches/plugin-pairs.sh
# Environment: PAIRS (30), MESSAGES (16000), SIZE (1024), SESSIONS (100),
# PIPELINE (see lib.sh), and lib.sh's ONE_PER_SESSION and SPLIT_CORES.
source "$(dirname "$0")/lib.sh"
PAIRS=${PAIRS:-30}
MESSAGES=${MESSAGES:-16000}
SIZE=${SIZE:-1024}
SESSIONS=${SESSIONS:-100}
PLUGINS=$(cd "$(dirname "$0")/../plugins/build" 2>/dev/null && pwd) || { echo "run make plugins first" >&2; exit 1; }

PLAIN=$(free_port); PIPE=$(free_port)
start_weir_plain_and_piped "$PLAIN" "$PIPE" "$PLUGINS"
for p in "$PLAIN" "$PIPE"; do MESSAGES=200 run "$p" "$SIZE" "$SESSIONS" >/dev/null; done

# "user system rocksdb" CPU ticks of Weir (RocksDB: its flush and
# compaction threads, which are also in user and system).
weir_ticks() {
  local u s r=0 comm
  read -r u s < <(awk '{print $14, $15}' "/proc/$WEIR_PID/stat")
  for t in /proc/"$WEIR_PID"/task/*; do
    comm=$(cat "$t/comm" 2>/dev/null) || continue
    case "$comm" in rocksdb*) r=$((r + $(awk '{print $14 + $15}' "$t/stat" 2>/dev/null || echo 0))) ;; esac
  done
  echo "$u $s $r"
}

# us EXPR: EXPR (CPU ticks) in microseconds a message.
us() { echo $((($1) * 1000000 / HZ / MESSAGES)); }

echo "Plain/pipeline pairs (${PIPELINE:-test plugins}), $((SIZE / 1024)) KB, $SESSIONS sessions, $MESSAGES messages a run; $(versions)"
echo "Weir's CPU a message in each run: all (user + system), and RocksDB's threads' share."
echo
LOG="$TMP/runs"
for i in $(seq "$PAIRS"); do
  order="plain pipe"
  [ $((i % 2)) = 0 ] && order="pipe plain"
  for mode in $order; do
    port=$PLAIN
    [ "$mode" = pipe ] && port=$PIPE
    read -r u0 s0 r0 < <(weir_ticks)
    rate=$(run "$port" "$SIZE" "$SESSIONS")
    read -r u1 s1 r1 < <(weir_ticks)
    line="$i $mode $rate $(us "u1 - u0 + s1 - s0") $(us "u1 - u0") $(us "s1 - s0") $(us "r1 - r0")"
    echo "$line" >> "$LOG"
    printf 'pair %2d %-5s %6s msg/s  CPU %4s us (user %3s, system %3s, RocksDB %3s)\n' $line
  done
done
echo
python3 - "$LOG" <<'PY'
import random, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    i, mode, rate, *_ = line.split()
    runs.setdefault(i, {})[mode] = int(rate)
pairs = [(r["plain"], r["pipe"]) for r in runs.values()]
median_pair = lambda ps: statistics.median(b / a for a, b in ps)
mean_ratio = lambda ps: statistics.mean(b for _, b in ps) / statistics.mean(a for a, _ in ps)
rng = random.Random(1)
def interval(stat):
    boot = sorted(stat([rng.choice(pairs) for _ in pairs]) for _ in range(5000))
    return f"{boot[124]:.2f}-{boot[4874]:.2f}x"
ratios = [b / a for a, b in pairs]
print(f"{len(pairs)} pairs: median pair {median_pair(pairs):.2f}x (95% interval {interval(median_pair)}), "
      f"ratio of mean rates {mean_ratio(pairs):.2f}x ({interval(mean_ratio)}); "
      f"pairs {min(ratios):.2f}-{max(ratios):.2f}x, {sum(r < 0.8 for r in ratios)} below 0.8x")
PY
