#!/usr/bin/env bash
# Two Weir builds (or more) on the five-plugin pipeline, in one run, their
# runs interleaved: on a shared host whose speed drifts by ±20% within an
# hour, builds measured in separate runs cannot be compared, and the ratio
# to plain Weir moves with plain Weir's own rate.
#
#   WEIR_A=/tmp/old/weir PLUGINS_A=/tmp/old/plugins \
#   WEIR_B=/tmp/new/weir PLUGINS_B=/tmp/new/plugins benches/plugin-ab.sh
#
# Each build runs with its own plugins (a plugin built against another
# interface version is refused). To build an older commit apart: `git
# worktree add /tmp/old COMMIT`, `make build` there (the same
# CARGO_TARGET_DIR), copy target/release/weir and plugins/build out; then
# `touch core/src/*.rs core/src/*/*.rs` in your own checkout before building
# it again, or cargo takes the worktree's build for yours (its fingerprints
# use paths relative to the workspace, and the worktree's files are newer). Environment: BUILDS (default "A B"; each
# letter X reads WEIR_X, PLUGINS_X, and PLAIN_X=1 to run that build without
# the pipeline), SIZE (1024), SESSIONS (100), MESSAGES (12000), ROUNDS (4),
# PIPELINE=noop, ONE_PER_SESSION=1. Prints every run (messages a second,
# Weir's CPU time and context switches a message), then each build's best
# rate and CPU range.
source "$(dirname "$0")/lib.sh"
MESSAGES=${MESSAGES:-12000}
SIZE=${SIZE:-1024}
SESSIONS=${SESSIONS:-100}
ROUNDS=${ROUNDS:-4}
BUILDS=${BUILDS:-"A B"}
DEFAULT_PLUGINS=$(cd "$(dirname "$0")/../plugins/build" 2>/dev/null && pwd) || DEFAULT_PLUGINS=""

declare -A PORT PID
for b in $BUILDS; do
  bin_var=WEIR_$b; plugins_var=PLUGINS_$b; plain_var=PLAIN_$b
  bin=${!bin_var:-$WEIR}
  plugins=${!plugins_var:-$DEFAULT_PLUGINS}
  [ -x "$bin" ] || { echo "build $b: no weir binary at $bin" >&2; exit 1; }
  pipeline="    pipeline: five"
  if [ "${!plain_var:-}" = 1 ]; then
    pipeline=""
  elif [ ! -d "$plugins" ]; then
    echo "build $b: no plugins at '$plugins' (set PLUGINS_$b, or run make plugins)" >&2; exit 1
  fi
  PORT[$b]=$(free_port)
  mkdir -p "$TMP/$b"
  pipeline_yaml=""
  if [ -n "$pipeline" ]; then pipeline_yaml=$(five_plugins "$plugins"); fi
  weir_yaml "${PORT[$b]}" "$TMP/$b/data" "delivery:
  enabled: false
$pipeline_yaml" "" "$pipeline" > "$TMP/$b/weir.yaml"
  "$bin" serve --config "$TMP/$b/weir.yaml" 2> "$TMP/$b/weir.log" &
  PID[$b]=$!
  PIDS+=("${PID[$b]}")
  # wait_port shows $TMP/weir.log if nothing comes up: this build's.
  ln -sf "$TMP/$b/weir.log" "$TMP/weir.log"
  wait_port "${PORT[$b]}"
done

# Context switches (voluntary, involuntary) of every thread of PID.
switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt/{v+=$2} /^nonvoluntary_ctxt/{n+=$2} END{print v+0, n+0}'; }

mode="smtp-source -d"; [ "${ONE_PER_SESSION:-}" = 1 ] && mode="one message per connection"
echo "Builds $BUILDS, ${PIPELINE:-test} plugins, $((SIZE / 1024)) KB, $SESSIONS sessions, $mode, $MESSAGES messages a run, $ROUNDS rounds"
for b in $BUILDS; do MESSAGES=300 run "${PORT[$b]}" "$SIZE" "$SESSIONS" >/dev/null; done
results=""
for _ in $(seq 1 "$ROUNDS"); do
  for b in $BUILDS; do
    read -r v0 n0 <<< "$(switches "${PID[$b]}")"
    c0=$(cpu_ticks "${PID[$b]}")
    rate=$(run "${PORT[$b]}" "$SIZE" "$SESSIONS")
    c1=$(cpu_ticks "${PID[$b]}")
    read -r v1 n1 <<< "$(switches "${PID[$b]}")"
    line=$(python3 -c "print(f'$b {$rate} {($c1 - $c0) / $HZ / $MESSAGES * 1e6:.0f} {($v1 - $v0) / $MESSAGES:.2f} {($n1 - $n0) / $MESSAGES:.2f}')")
    results+="$line"$'\n'
    read -r _ r c v n <<< "$line"
    printf '%s: %6s msg/s, %4s us CPU a message, %s voluntary and %s involuntary context switches a message\n' "$b" "$r" "$c" "$v" "$n"
  done
done
echo
echo "$results" | python3 -c '
import sys
runs = {}
for l in sys.stdin:
    if l.strip():
        b, rate, cpu, _, _ = l.split()
        runs.setdefault(b, []).append((int(rate), int(cpu)))
first = None
for b, v in runs.items():
    best = max(r for r, _ in v)
    first = first or best
    print(f"{b}: best {best} msg/s ({best / first:.2f}x of the first build), {min(c for _, c in v)}-{max(c for _, c in v)} us CPU a message")'
