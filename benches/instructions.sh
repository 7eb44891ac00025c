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
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind.%p" \
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
python3 - "$OUT" "$MESSAGES" <<'PY'
import glob, re, subprocess, sys
out, n = sys.argv[1], int(sys.argv[2])
def groups(path):
    text = subprocess.run(["callgrind_annotate", "--threshold=100", path], capture_output=True, text=True, check=True).stdout
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
dumps = {}
for path in glob.glob(f"{out}/callgrind.*"):
    with open(path, errors="replace") as f:
        head = f.read(4096)
    m = re.search(r"^desc: Trigger: dump (plain|pipeline)$", head, re.M)
    if m:
        dumps[m.group(1)] = groups(path)
if set(dumps) != {"plain", "pipeline"}:
    sys.exit(f"callgrind dumps not found in {out}: {sorted(dumps)}")
p, q = dumps["plain"], dumps["pipeline"]
keys = sorted(set(p) | set(q), key=lambda k: -q.get(k, 0))
print(f"| {'':24} | {'plain':>8} | {'pipeline':>8} | {'added':>8} |")
print(f"|{'-' * 26}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
for k in keys:
    a, b = p.get(k, 0) / n, q.get(k, 0) / n
    print(f"| {k:24} | {a:8.0f} | {b:8.0f} | {b - a:+8.0f} |")
a, b = sum(p.values()) / n, sum(q.values()) / n
print(f"| {'total':24} | {a:8.0f} | {b:8.0f} | {b - a:+8.0f} |")
PY
