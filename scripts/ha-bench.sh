#!/usr/bin/env bash
# High availability, measured (issue 20; figures in BENCHMARKS.md):
#
# 1. A failover under load: an active and a standby baton sharing a Redis
#    and the floating media address 127.0.0.2; `baton load` runs CALLS
#    calls through the active and SIGKILLs it KILL_AT seconds in. Reported:
#    how soon each stream got through again (from the kill to its first
#    packet through the standby), streams that never did, packets lost per
#    stream, the standby's own takeover time, and Redis's write rate.
# 2. What Redis costs the packet path: the relay's CPU seconds for the same
#    load with and without --redis, alternated ROUNDS times in one sitting.
#
# Needs redis-server and redis-cli; loopback only. Usage:
#   scripts/ha-bench.sh            (CALLS=500 DURATION=12 KILL_AT=5 ROUNDS=3)
set -euo pipefail
cd "$(dirname "$0")/.."

CALLS=${CALLS:-500}
DURATION=${DURATION:-12}
KILL_AT=${KILL_AT:-5}
ROUNDS=${ROUNDS:-3}
HEARTBEAT=${HEARTBEAT:-0.1}
HEARTBEAT_TIMEOUT=${HEARTBEAT_TIMEOUT:-0.5}
BATON=${BATON:-target/release/baton}
[ -x "$BATON" ] || cargo build --release --quiet

dir=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" >"$dir/redis.log" 2>&1 &
pids+=($!)
disown
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done

# relay NAME [extra flags...]: starts `baton run`, prints its pid.
relay() {
    local name=$1
    shift
    "$BATON" run --control "unix:$dir/$name.sock" --media-ip 127.0.0.2 --ports 40000-49999 \
        --log-level warn "$@" >"$dir/$name.log" 2>&1 &
    local pid=$!
    for _ in $(seq 200); do [ -S "$dir/$name.sock" ] && break; sleep 0.05; done
    echo "$pid"
}
ctl() { "$BATON" ctl --control "unix:$dir/$1.sock" "${@:2}"; }
role() { ctl "$1" stats | python3 -c 'import json,sys; print((json.load(sys.stdin).get("ha") or {}).get("role",""))'; }
cpu_seconds() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }
# CPU seconds of the media worker threads alone: the packet path.
worker_seconds() {
    local total=0 task
    for task in /proc/"$1"/task/*; do
        if grep -q '^baton-worker' "$task/comm" 2>/dev/null; then
            total=$(awk -v t="$total" '{print t + ($14 + $15) / 100}' "$task/stat")
        fi
    done
    echo "$total"
}

ha_flags=(--redis "redis://127.0.0.1:$redis_port" --heartbeat-interval "$HEARTBEAT"
    --heartbeat-timeout "$HEARTBEAT_TIMEOUT")

echo "== 1. failover under load: $CALLS calls (2 streams each, 20 ms packets), active killed at ${KILL_AT}s"
echo "   heartbeat every ${HEARTBEAT}s, timeout ${HEARTBEAT_TIMEOUT}s; machine: $(nproc) cores, $(uname -r)"
active=$(relay active "${ha_flags[@]}" --redis-instance active)
pids+=("$active")
for _ in $(seq 100); do [ "$(role active)" = active ] && break; sleep 0.05; done
standby=$(relay standby "${ha_flags[@]}" --redis-instance standby --redis-standby)
pids+=("$standby")
for _ in $(seq 100); do [ "$(role standby)" = standby ] && break; sleep 0.05; done

"$BATON" load --control "unix:$dir/active.sock" --calls "$CALLS" --duration "$DURATION" \
    --kill-pid "$active" --kill-at "$KILL_AT" --json >"$dir/load.json" 2>"$dir/load.err" &
load=$!
# Redis's write rate in steady state (between 1.5 s and 3.5 s of media).
sleep 2
before=$(redis-cli -p "$redis_port" info stats | awk -F: '/total_commands_processed/ {print $2+0}')
sleep 2
after=$(redis-cli -p "$redis_port" info stats | awk -F: '/total_commands_processed/ {print $2+0}')
wait "$load" || true
grep -E "after the kill|lost|violations|killed" "$dir/load.err" | sed 's/^/   load: /'
python3 - "$dir/load.json" "$CALLS" <<'EOF'
import json, sys
summary = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
failover = summary.get("failover") or {}
streams = failover.get("streams", 0)
print(f"   streams through again: {failover.get('recovered')} of {streams}; "
      f"from the kill to the first packet through the standby: p50 {failover.get('recovery_ms', {}).get('p50', 0):.0f} ms, "
      f"max {failover.get('recovery_ms', {}).get('max', 0):.0f} ms")
lost = summary.get("lost", 0)
print(f"   packets lost: {lost} in all, {lost / max(streams, 1):.1f} per stream")
EOF
ctl standby stats >"$dir/standby.json"
python3 - "$dir/standby.json" <<'EOF'
import json, sys
ha = json.load(open(sys.argv[1]))["ha"]
print(f"   standby: role {ha['role']}, sessions resumed {ha['sessions_resumed']}, "
      f"not resumed {ha['resume_failures']}, takeover took {ha['last_takeover_ms']} ms "
      "(reading Redis and binding every call)")
EOF
echo "   Redis commands/s in steady state: $(( (after - before) / 2 ))"
kill -9 "$standby" 2>/dev/null || true
redis-cli -p "$redis_port" flushall >/dev/null

echo "== 2. the packet path with and without Redis: $CALLS calls, ${DURATION}s, relay CPU seconds"
for round in $(seq "$ROUNDS"); do
    for mode in off on; do
        name="cpu-$mode-$round"
        if [ "$mode" = on ]; then
            pid=$(relay "$name" "${ha_flags[@]}" --redis-instance "$name" --redis-key-prefix "$name")
            for _ in $(seq 100); do [ "$(role "$name")" = active ] && break; sleep 0.05; done
        else
            pid=$(relay "$name")
        fi
        pids+=("$pid")
        cpu0=$(cpu_seconds "$pid")
        work0=$(worker_seconds "$pid")
        "$BATON" load --control "unix:$dir/$name.sock" --calls "$CALLS" --duration "$DURATION" --json \
            >"$dir/$name.json" 2>/dev/null || true
        cpu1=$(cpu_seconds "$pid")
        work1=$(worker_seconds "$pid")
        python3 - "$dir/$name.json" "$mode" "$round" "$cpu0" "$cpu1" "$work0" "$work1" <<'EOF'
import json, sys
summary = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
sent, lost = summary.get("sent", 0), summary.get("lost", 0)
cpu = float(sys.argv[5]) - float(sys.argv[4])
work = float(sys.argv[7]) - float(sys.argv[6])
print(f"   round {sys.argv[3]} redis {sys.argv[2]:>3}: relay CPU {cpu:.2f} s, of it media workers {work:.2f} s "
      f"({work / max(sent, 1) * 1e6:.2f} µs/packet) for {sent} packets, lost {lost}")
EOF
        kill -9 "$pid" 2>/dev/null || true
    done
done
