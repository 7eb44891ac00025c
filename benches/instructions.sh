#!/usr/bin/env bash
# Instructions a message, counted by valgrind's callgrind: one Weir with a
# plain listener and the five-plugin pipeline's (lib.sh), each sent the same
# smtp-source load in turn. Every thread of the server is counted (sessions,
# queue writer, kv writer, RocksDB's), user space only; the kernel's work
# (sockets, fsync) is not in it.
#
# Timed rates on a shared VM move by ±20% from run to run; these counts
# move by about 1%, so a change to the message path can be measured here
# by itself. They are not a rate: a cache miss costs no more than an add.
# Under valgrind the plugins' memories are bounds-checked (it cannot give
# every instance the 4 GiB reservation that makes checks unneeded), so the
# plugin code takes more instructions here than in production.
#
#   make plugins && benches/instructions.sh
# Environment: MESSAGES (1000), SIZE (1024), SESSIONS (4), PIPELINE (see
# lib.sh), KEEP=DIR keeps the callgrind files for callgrind_annotate,
# PLUGINS=DIR takes the plugins from DIR instead of plugins/build (unstripped
# builds, with WEIR_PLUGIN_PERFMAP=1, name the plugins' functions).
# CACHE=1 also simulates the caches (this host's AMD EPYC: 32 KiB 8-way L1
# instruction and data caches, 1 MiB 8-way L2 as the last level) and adds
# tables of L1 instruction-cache misses and L1 data-cache misses (reads and
# writes) a message. The simulation is one cache for all threads, which
# valgrind runs one at a time, so it is a measure of footprint, not a
# prediction; but the pipeline's cost follows its misses far more than
# its instructions (benches/README.md).
source "$(dirname "$0")/lib.sh"
command -v valgrind >/dev/null || { echo "valgrind missing (apt-get install valgrind)" >&2; exit 1; }
MESSAGES=${MESSAGES:-1000}
SIZE=${SIZE:-1024}
SESSIONS=${SESSIONS:-4}
PLUGINS=$(cd "${PLUGINS:-$(dirname "$0")/../plugins/build}" 2>/dev/null && pwd) || { echo "run make plugins first" >&2; exit 1; }
OUT=${KEEP:-$TMP/callgrind}
mkdir -p "$OUT"

PLAIN=$(free_port); PIPE=$(free_port)
# valgrind caps the address space: 16 plugin instances' reservations fit.
weir_yaml "$PLAIN" "$TMP/weir-data" "delivery:
  enabled: false
plugin_runtime:
  max_instances: 16
$(five_plugins "$PLUGINS")" "$(piped_listener "$PIPE")" > "$TMP/weir.yaml"
CACHE_SIM=()
[ "${CACHE:-}" = 1 ] && CACHE_SIM=(--cache-sim=yes --I1=32768,8,64 --D1=32768,8,64 --LL=1048576,8,64)
valgrind --tool=callgrind "${CACHE_SIM[@]}" --instr-atstart=no --callgrind-out-file="$OUT/callgrind.%p" \
  "$WEIR" serve --config "$TMP/weir.yaml" 2> "$TMP/weir.log" &
VG=$!
PIDS+=("$VG")
# Under valgrind the server takes seconds to start: wait up to a minute.
wait_port "$PIPE" 1200

send() { # PORT COUNT (lib.sh's run: smtp-source -d, SESSIONS at once)
  MESSAGES=$2 run "$1" "$SIZE" "$SESSIONS" >/dev/null
}
# One mode: warm-up uncounted, then MESSAGES counted, dumped to its own file.
count() { # PORT NAME
  send "$1" 300
  callgrind_control -i on "$VG" >/dev/null 2>&1
  callgrind_control -z "$VG" >/dev/null 2>&1
  send "$1" "$MESSAGES"
  callgrind_control -d "$2" "$VG" >/dev/null 2>&1
  callgrind_control -i off "$VG" >/dev/null 2>&1
}
count "$PLAIN" plain
count "$PIPE" pipeline
kill "$VG"; wait "$VG" 2>/dev/null || true

echo "Instructions a message (callgrind, user space, all threads), $MESSAGES messages of $SIZE bytes, smtp-source -d -s $SESSIONS; $(versions)"
echo
python3 - "$OUT" "$MESSAGES" "${CACHE:-}" <<'PY'
import glob, re, subprocess, sys
out, n, cache = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
def groups(path, event):
    text = subprocess.run(["callgrind_annotate", "--threshold=100", f"--show={event}", f"--sort={event}", path], capture_output=True, text=True, check=True).stdout
    g = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        count, f = int(m.group(1).replace(",", "")), m.group(2)
        if f.endswith("[???]"): k = "plugin code (JIT)"
        elif "wasmtime" in f or "cranelift" in f: k = "wasmtime"
        elif "rocksdb" in f: k = "RocksDB"
        elif "serde" in f: k = "serde"
        elif "weir::plugin" in f or "weir::policy" in f: k = "Weir: plugins, policy"
        elif "weir::" in f: k = "Weir: other"
        elif re.search(r"\bmi_|_mi_", f): k = "mimalloc"
        elif "libc.so" in f: k = "libc"
        elif "tokio" in f: k = "tokio"
        else: k = "other (std, fmt, ...)"
        g[k] = g.get(k, 0) + count
    return g
paths = {}
for path in glob.glob(f"{out}/callgrind.*"):
    with open(path, errors="replace") as f:
        head = f.read(4096)
    m = re.search(r"^desc: Trigger: dump (plain|pipeline)$", head, re.M)
    if m:
        paths[m.group(1)] = path
if set(paths) != {"plain", "pipeline"}:
    sys.exit(f"callgrind dumps not found in {out}: {sorted(paths)}")
tables = [("Instructions", "Ir", 0)]
if cache:
    tables += [("L1 instruction-cache misses", "I1mr", 1), ("L1 data-cache misses (reads + writes)", "D1mr,D1mw", 1)]
for title, event, digits in tables:
    p, q = ({}, {})
    for e in event.split(","):
        for d, k in ((p, "plain"), (q, "pipeline")):
            for g, v in groups(paths[k], e).items():
                d[g] = d.get(g, 0) + v
    keys = sorted(set(p) | set(q), key=lambda k: -q.get(k, 0))
    if cache:
        print(f"{title} a message:")
        print()
    print(f"| {'':24} | {'plain':>8} | {'pipeline':>8} | {'added':>8} |")
    print(f"|{'-' * 26}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    for k in keys:
        a, b = p.get(k, 0) / n, q.get(k, 0) / n
        print(f"| {k:24} | {a:8.{digits}f} | {b:8.{digits}f} | {b - a:+8.{digits}f} |")
    a, b = sum(p.values()) / n, sum(q.values()) / n
    print(f"| {'total':24} | {a:8.{digits}f} | {b:8.{digits}f} | {b - a:+8.{digits}f} |")
    if cache:
        print()
PY
