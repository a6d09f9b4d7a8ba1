#!/usr/bin/env bash
# Soak: session churn under media load for a given time, then checks that
# the relay returns to its idle figures: sessions, port pairs, open files,
# threads, and that its memory did not grow.
#
#   scripts/soak.sh SECONDS        (at least 60; 600 or more for a real soak)
#
# Each round (about 25 s): `baton load` runs 200 calls with a handoff every
# 0.2 s (create, transfer, delete), while 40 sessions are created and
# abandoned — half never see media (setup timeout), half get a few packets
# and go silent (media timeout) — and the relay's figures are sampled.
# Environment: BATON (binary; default: release build), SOAK_BASE (control
# port, default 27120). Prints the figures; exits 1 on a leak.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:?usage: scripts/soak.sh SECONDS}
[ "$duration" -ge 60 ] || { echo "give at least 60 seconds"; exit 2; }
if [ -z "${BATON:-}" ]; then
    cargo build --release --quiet
    BATON=target/release/baton
fi
base=${SOAK_BASE:-27120}
control="tcp:127.0.0.1:$base"
logs=$(mktemp -d /tmp/baton-soak.XXXXXX)

"$BATON" run --control "$control" --ports 40000-49999 --media-timeout 2 --setup-timeout 3 \
    --learning-window 1 >"$logs/baton.log" 2>&1 &
relay=$!
trap 'kill $relay 2>/dev/null || true' EXIT
for _ in $(seq 50); do "$BATON" ctl --control "$control" ping >/dev/null 2>&1 && break; sleep 0.1; done

figures() {
    local stats
    stats=$("$BATON" ctl --control "$control" stats)
    python3 - "$relay" "$stats" <<'PY'
import json, os, sys
pid, stats = sys.argv[1], json.loads(sys.argv[2])
fds = len(os.listdir(f"/proc/{pid}/fd"))
threads = len(os.listdir(f"/proc/{pid}/task"))
rss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:"))
free = sum(p["free_pairs"] for p in stats["ports"])
total = sum(p["total_pairs"] for p in stats["ports"])
print(stats["sessions"], free, total, fds, threads, rss)
PY
}

read -r s0 free0 total0 fd0 th0 rss0 < <(figures)
echo "idle at start: sessions $s0, free pairs $free0/$total0, open files $fd0, threads $th0, RSS ${rss0} KiB"

abandon() {
    local round=$1 i
    for i in $(seq 20); do
        # Never sees media: ends by the setup timeout.
        "$BATON" ctl --control "$control" create --call-id "soak-quiet-$round-$i" --from-tag f \
            --aor sip:soak@soak.invalid --gruu 'sip:soak@soak.invalid;gr=urn:uuid:1' \
            --stream audio:0 >/dev/null
    done
    python3 - "$BATON" "$control" "$round" <<'PY'
# Gets a few packets, then goes silent: ends by the media timeout.
import json, socket, struct, subprocess, sys
baton, control, round_ = sys.argv[1:4]
for i in range(20):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    out = subprocess.run([baton, "ctl", "--control", control, "create", "--call-id",
        f"soak-brief-{round_}-{i}", "--from-tag", "f", "--aor", "sip:soak@soak.invalid",
        "--gruu", "sip:soak@soak.invalid;gr=urn:uuid:2", "--stream", "audio:0",
        "--user-peer", f"127.0.0.1:{s.getsockname()[1]}"], capture_output=True, check=True)
    relay = json.loads(out.stdout)["streams"][0]["user"]["rtp"]
    host, port = relay.rsplit(":", 1)
    for seq in range(5):
        s.sendto(struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0xABC) + bytes(160), (host, int(port)))
    s.close()
PY
}

start=$(date +%s)
round=0
rss_samples=()
while [ $(( $(date +%s) - start )) -lt "$duration" ]; do
    round=$((round + 1))
    abandon "$round" &
    churn=$!
    "$BATON" load --control "$control" --calls 200 --duration 20 --handoff-every 0.2 --json \
        >"$logs/load-$round.json" 2>"$logs/load-$round.log" || {
        echo "round $round: baton load failed"; tail "$logs/load-$round.log"; exit 1; }
    wait "$churn"
    summary=$(tail -n 1 "$logs/load-$round.json")
    read -r s free total fd th rss < <(figures)
    rss_samples+=("$rss")
    python3 - "$round" "$summary" "$s" "$fd" "$th" "$rss" <<'PY'
import json, sys
r, summary, s, fd, th, rss = sys.argv[1], json.loads(sys.argv[2]), *sys.argv[3:]
h = summary["handoffs"]
print(f"round {r}: sent {summary['sent']} lost {summary['lost']} "
      f"violations {summary['continuity_violations']} handoffs {h['completed']}/{h['failed']} "
      f"| sessions {s} open files {fd} threads {th} RSS {rss} KiB")
PY
done

# Let the abandoned sessions time out.
sleep 5
read -r s1 free1 total1 fd1 th1 rss1 < <(figures)
echo "idle at end:   sessions $s1, free pairs $free1/$total1, open files $fd1, threads $th1, RSS ${rss1} KiB"
timed_out=$("$BATON" ctl --control "$control" stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["sessions_timed_out"])')
bindings=$("$BATON" ctl --control "$control" bindings | python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("bindings", [])))')
echo "rounds: $round; sessions ended by timeout: $timed_out; live device bindings: $bindings"
# Memory: compare the end of the second round (allocator warmed up) with
# the last round.
first=${rss_samples[1]:-${rss_samples[0]}}
last=${rss_samples[-1]}
growth=$(( last - first ))
echo "RSS after round 2: ${first} KiB; after the last round: ${last} KiB; growth ${growth} KiB"

status=0
[ "$s1" = 0 ] || { echo "LEAK: $s1 sessions left"; status=1; }
[ "$free1" = "$total1" ] || { echo "LEAK: $((total1 - free1)) port pairs still in use"; status=1; }
[ "$fd1" = "$fd0" ] || { echo "LEAK: open files $fd0 -> $fd1"; status=1; }
[ "$th1" = "$th0" ] || { echo "LEAK: threads $th0 -> $th1"; status=1; }
# Allow 10 % (and 4 MiB) of noise between rounds that carry the same load.
limit=$(( first / 10 > 4096 ? first / 10 : 4096 ))
[ "$growth" -le "$limit" ] || { echo "LEAK: memory grew by ${growth} KiB"; status=1; }
[ "$status" = 0 ] && echo "PASS: back to idle, no growth"
rm -rf "$logs"
exit $status
