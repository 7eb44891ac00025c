#!/usr/bin/env bash
# The accept-rate benchmark with a 5-plugin pipeline: Weir without plugins,
# Weir with conn-guard (connect, helo), sender-guard (mail_from), rcpt-guard
# (rcpt_to), stamp (data: reads the body, counts in kv, adds a header) and
# router (route) on every message, and Postfix, in the same run under the
# same smtp-source load. Goal: with plugins >= 0.8x without, >= 2x Postfix.
#
#   make plugins && benches/plugin-accept-rate.sh     (or: make bench)
# Environment: MESSAGES (default 4000), ROUNDS (plain/pipeline pairs a
# cell, default 3), SIZES, SESSIONS, WEIR;
# PIPELINE=noop runs five plugins that only say continue at every stage
# (the runtime's own cost, without the test plugins' work);
# ONE_PER_SESSION=1 gives every message its own connection (smtp-source
# without -d), as most inbound MX traffic comes; SPLIT_CORES=1 runs the
# servers on one core and smtp-source on the others (lib.sh).
source "$(dirname "$0")/lib.sh"
MESSAGES=${MESSAGES:-4000}
ROUNDS=${ROUNDS:-3}
SIZES=${SIZES:-"1024 10240"}
SESSIONS=${SESSIONS:-"20 100"}
PLUGINS=$(cd "$(dirname "$0")/../plugins/build" 2>/dev/null && pwd) || { echo "run make plugins first" >&2; exit 1; }

PLAIN=$(free_port); PIPE=$(free_port); PF_PORT=$(free_port)
start_weir_plain_and_piped "$PLAIN" "$PIPE" "$PLUGINS"
start_postfix "$PF_PORT"

# measure PORT SIZE SESSIONS -> "msg/s cpu_us_per_msg" for Weir
measure() {
  local c0 c1 r
  c0=$(cpu_ticks "$WEIR_PID")
  r=$(run "$1" "$2" "$3")
  c1=$(cpu_ticks "$WEIR_PID")
  echo "$r $(python3 -c "print(f'{($c1 - $c0) / $HZ / $MESSAGES * 1e6:.0f}')")"
}
best() { # "rate cpu" lines -> best rate, lowest cpu
  python3 -c "import sys; v=[l.split() for l in sys.stdin if l.strip()]; print(max(int(a) for a,b in v), min(int(b) for a,b in v))"
}

mode="smtp-source -d"; [ "${ONE_PER_SESSION:-}" = 1 ] && mode="smtp-source, one message per session"
[ "${SPLIT_CORES:-}" = 1 ] && mode+="; servers on core 0, smtp-source on the others"
echo "Accept rate with a 5-plugin pipeline (${PIPELINE:-test plugins}), $mode, $MESSAGES messages per run; $(versions)"
echo "Weir runs alternate plain/pipeline $ROUNDS times per cell (the disk's fsync time varies from run to run);"
echo "the table shows the best rate of each, the median of the $ROUNDS runs' pipeline/plain ratios (each"
echo "pipeline run against the plain run just before it) with the lowest and highest of them, and the"
echo "lowest Weir CPU time per message."
echo
printf '| %-6s | %-8s | %-10s | %-12s | %-13s | %-10s | %-24s | %-12s | %-11s | %-11s |\n' size sessions "weir msg/s" "weir+5 msg/s" "postfix msg/s" "+5 / plain" "median pair (range)" "+5 / postfix" "CPU/msg" "CPU/msg +5"
printf '|--------|----------|------------|--------------|---------------|------------|--------------------------|--------------|-------------|-------------|\n'
for size in $SIZES; do
  for sessions in $SESSIONS; do
    for p in "$PLAIN" "$PIPE" "$PF_PORT"; do MESSAGES=200 run "$p" "$size" "$sessions" >/dev/null; done
    plain_runs=""; pipe_runs=""
    for _ in $(seq "$ROUNDS"); do
      plain_runs+="$(measure "$PLAIN" "$size" "$sessions")"$'\n'
      pipe_runs+="$(measure "$PIPE" "$size" "$sessions")"$'\n'
    done
    read -r w wc <<< "$(echo "$plain_runs" | best)"
    read -r wp wpc <<< "$(echo "$pipe_runs" | best)"
    paired=$(python3 -c "import sys, statistics
a = [int(l.split()[0]) for l in sys.argv[1].splitlines() if l.strip()]
b = [int(l.split()[0]) for l in sys.argv[2].splitlines() if l.strip()]
r = [y / x for x, y in zip(a, b)]
print(f'{statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f}x)')" "$plain_runs" "$pipe_runs")
    p=$(run "$PF_PORT" "$size" "$sessions")
    printf '| %-6s | %-8s | %-10s | %-12s | %-13s | %-10s | %-24s | %-12s | %-11s | %-11s |\n' "$((size / 1024)) KB" "$sessions" "$w" "$wp" "$p" \
      "$(python3 -c "print(f'{$wp / $w:.2f}x')")" "$paired" "$(python3 -c "print(f'{$wp / $p:.2f}x')")" "$wc us" "$wpc us"
  done
done
stamped=$("$WEIR" queue list --json --config "$TMP/weir.yaml" | python3 -c '
import json, sys
q = json.load(sys.stdin)
print(sum(1 for m in q if any(d["plugin"] == "router" for d in m.get("decisions", []))))')
echo
echo "check: $stamped messages went through all five plugins"
