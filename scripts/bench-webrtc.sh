#!/usr/bin/env bash
# Do new WebRTC legs disturb established streams? 500 calls (1000 one-way
# streams at 50 packets/s) through one baton worker, with and without 100 new
# WebRTC legs a second (each: ICE check + DTLS handshake with the relay, the
# call deleted a second later), runs interleaved in one sitting.
#
# Usage: scripts/bench-webrtc.sh            (REPS=3 DURATION=20 RATE=100 CALLS=500)
#   BATON=path/to/baton (default: builds --release).
# The relay is pinned to core 0 (its worker and its DTLS thread share it), the
# generator and the WebRTC clients to core 1. Everything runs on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
reps="${REPS:-3}"; duration="${DURATION:-20}"; rate="${RATE:-100}"; calls="${CALLS:-500}"
if [[ -z "${BATON:-}" ]]; then
  cargo build --release --quiet
  BATON=./target/release/baton
fi
work=$(mktemp -d)
trap 'kill $relay_pid 2>/dev/null || true; rm -rf "$work"' EXIT
relay_pid=""
run_one() {  # $1: label, $2: extra load args
  local socket="$work/control-$1-$3.sock"
  taskset -c 0 "$BATON" run --control "unix:$socket" --workers 1 --media-ip 127.0.0.1 \
    --ports 30000-39999 2> "$work/relay-$1-$3.log" &
  relay_pid=$!
  for _ in $(seq 100); do [[ -S "$socket" ]] && break; sleep 0.05; done
  taskset -c 1 "$BATON" load --control "unix:$socket" --calls "$calls" --duration "$duration" \
    --share-sockets 16 --json $2 > "$work/out-$1-$3.txt" 2> "$work/err-$1-$3.txt" || true
  kill "$relay_pid"; wait "$relay_pid" 2>/dev/null || true
}
for rep in $(seq "$reps"); do
  run_one baseline "" "$rep"
  run_one webrtc "--webrtc-legs-per-second $rate" "$rep"
done
WORK="$work" REPS="$reps" RATE="$rate" CALLS="$calls" python3 - <<'PY'
import json, os, statistics
work, reps = os.environ["WORK"], int(os.environ["REPS"])
def runs(label):
    out = []
    for rep in range(1, reps + 1):
        lines = open(os.path.join(work, f"out-{label}-{rep}.txt")).read().split("\n")
        lines = [l for l in lines if l.strip()]
        summary = json.loads(lines[-1])
        webrtc = json.loads(lines[-2]) if label == "webrtc" else None
        out.append((summary, webrtc))
    return out
print(f"| | p50 µs | p99 µs | p99.9 µs | loss % | WebRTC legs connected | ICE+DTLS setup p50 / p99 ms |")
print("|---|---|---|---|---|---|---|")
medians = {}
for label in ("baseline", "webrtc"):
    rs = runs(label)
    med = lambda f: statistics.median(f(s, w) for s, w in rs)
    p50, p99, p999 = (med(lambda s, w, k=k: s["latency_us"][k]) for k in ("p50", "p99", "p999"))
    loss = med(lambda s, w: 100.0 * s["lost"] / max(1, s["sent"]))
    medians[label] = (p50, p99, p999, loss)
    if label == "webrtc":
        legs = " / ".join(f'{w["connected"]} of {w["attempted"]}' for s, w in rs)
        setup = f'{med(lambda s, w: w["setup_ms_p50"]):.1f} / {med(lambda s, w: w["setup_ms_p99"]):.1f}'
    else:
        legs, setup = "—", "—"
    runs_p99 = ", ".join(f'{s["latency_us"]["p99"]:.0f}' for s, _ in rs)
    print(f"| {label} | {p50:.1f} | {p99:.1f} (runs {runs_p99}) | {p999:.1f} | {loss:.3f} | {legs} | {setup} |")
b, w = medians["baseline"], medians["webrtc"]
print()
print(f"ratios with {os.environ['RATE']} new WebRTC legs/s to without: p50 {w[0] / b[0]:.2f}×, p99 {w[1] / b[1]:.2f}×, p99.9 {w[2] / b[2]:.2f}×")
PY
