#!/usr/bin/env bash
# End to end with a real SIP proxy: Kamailio (registrar with GRUU, the
# rtpengine module pointed at baton's ng listener) and SIPp user agents.
#
#   1. device A (SIPp) calls bob (SIPp); RTP from A reaches bob via baton;
#   2. device B of the same user registers (gets a public GRUU) and sends
#      INVITE with Replaces; Kamailio authenticates it (digest), hands the
#      call over through baton (ng offer/answer with baton's handoff keys),
#      answers B and ends A's leg with a BYE; bob is told nothing;
#   3. B talks, then hangs up; Kamailio deletes the call and BYEs bob;
#   4. what bob received is checked: one SSRC, no sequence gap, timestamps
#      never backwards, A's media then B's.
#
# Everything runs on 127.0.0.1, bounded in time, and is stopped by PID.
# Installs kamailio and sip-tester (SIPp) from Debian when missing.
# Environment: BATON (the binary; default: builds it), E2E_BASE (first of
# the ports used, default 25060), KEEP_LOGS=1 (keep the log directory).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

if ! command -v kamailio >/dev/null || ! command -v sipp >/dev/null; then
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    echo "installing kamailio and sip-tester..."
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends kamailio sip-tester
fi

if [ -z "${BATON:-}" ]; then
    cargo build --release --quiet
    BATON=target/release/baton
fi

base=${E2E_BASE:-25060}
sip_port=$base
ng_port=$((base + 1))
control_port=$((base + 2))
loop_port=$((base + 3))
bob_sip=$((base + 10))
a_sip=$((base + 11))
b_sip=$((base + 12))
bob_rtp=$((base + 20))
a_rtp=$((base + 22))
b_rtp=$((base + 24))
media_lo=$((base + 1000))
media_hi=$((base + 1999))
password=e2e-digest-secret
call_id="baton-e2e-$$@127.0.0.1"

logs=$(mktemp -d /tmp/baton-e2e.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 0.3
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    if [ "${KEEP_LOGS:-0}" = 1 ] || [ "${failed:-0}" = 1 ]; then
        echo "logs: $logs"
    else
        rm -rf "$logs"
    fi
}
trap cleanup EXIT
fail() {
    failed=1
    echo "FAILED: $*"
    for f in "$logs"/*.log; do echo "--- $f"; tail -n 25 "$f"; done
    exit 1
}

# baton, with the ng listener Kamailio will use.
timeout 90 "$BATON" run --control "tcp:127.0.0.1:$control_port" \
    --listen-ng "udp:127.0.0.1:$ng_port" --ports "$media_lo-$media_hi" \
    >"$logs/baton.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
    "$BATON" ctl --control "tcp:127.0.0.1:$control_port" ping >/dev/null 2>&1 && break
    sleep 0.1
done
"$BATON" ctl --control "tcp:127.0.0.1:$control_port" ping >/dev/null || fail "baton did not start"

# Kamailio in the foreground, with our config.
sed -e "s/__SIP_PORT__/$sip_port/g" -e "s/__LOOP_PORT__/$loop_port/g" -e "s/__NG__/udp:127.0.0.1:$ng_port/" \
    -e "s/__PASSWORD__/$password/" -e "s/^debug=2/debug=${KAMAILIO_DEBUG:-2}/" contrib/kamailio/kamailio.cfg >"$logs/kamailio.cfg"
timeout 90 kamailio -f "$logs/kamailio.cfg" -DD -E -m 64 -M 8 -w "$logs" -Y "$logs" \
    >"$logs/kamailio.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
    grep -q "rtpengine.*pong\|udp: 127.0.0.1" "$logs/kamailio.log" 2>/dev/null && break
    sleep 0.1
done
sleep 0.5
kill -0 "${pids[1]}" 2>/dev/null || fail "kamailio did not start"

sipp_common=(-i 127.0.0.1 -m 1 -timeout 40s -timeout_error -nostdin -trace_err
    -key bob_port "$bob_sip" -key proxy_port "$sip_port")

# bob answers; his RTP socket belongs to media.py.
timeout 60 sipp "${sipp_common[@]}" -sf scripts/e2e/bob.xml -p "$bob_sip" \
    -key bob_tag bob-tag-1 -key bob_rtp_port "$bob_rtp" \
    -error_file "$logs/bob-errors.log" >"$logs/bob.log" 2>&1 &
bob_pid=$!
pids+=($bob_pid)

timeout 60 python3 scripts/e2e/media.py --bob-port "$bob_rtp" --a-port "$a_rtp" --b-port "$b_rtp" \
    --a-relay-file "$logs/a-relay-port" --b-relay-file "$logs/b-relay-port" \
    --b-seconds 2 >"$logs/media.log" 2>&1 &
media_pid=$!
pids+=($media_pid)

# Device A calls bob through the proxy.
timeout 60 sipp "${sipp_common[@]}" -sf scripts/e2e/alice_a.xml -p "$a_sip" \
    -cid_str "$call_id" -key a_tag alice-a-tag-1 -key a_rtp_port "$a_rtp" \
    -key a_relay_file "$logs/a-relay-port" \
    -error_file "$logs/a-errors.log" "127.0.0.1:$sip_port" >"$logs/alice-a.log" 2>&1 &
a_pid=$!
pids+=($a_pid)

for _ in $(seq 100); do [ -s "$logs/a-relay-port" ] && break; sleep 0.1; done
[ -s "$logs/a-relay-port" ] || fail "device A's call was not answered"
echo "call up: device A <-> bob, relay port for A: $(cat "$logs/a-relay-port")"
sleep 2

# Device B takes the call over.
timeout 60 sipp "${sipp_common[@]}" -sf scripts/e2e/alice_b.xml -p "$b_sip" \
    -cid_str "baton-e2e-b-$$@127.0.0.1" -key b_tag alice-b-tag-1 -key b_rtp_port "$b_rtp" \
    -key replaces "$call_id;to-tag=bob-tag-1;from-tag=alice-a-tag-1" \
    -key b_relay_file "$logs/b-relay-port" -au alice -ap "$password" -d 3000 \
    -error_file "$logs/b-errors.log" "127.0.0.1:$sip_port" >"$logs/alice-b.log" 2>&1 &
b_pid=$!
pids+=($b_pid)

status=0
wait "$b_pid" || fail "device B's scenario failed (register, handoff, talk, hang up)"
echo "handoff: device B answered by the proxy, relay port for B: $(cat "$logs/b-relay-port")"
wait "$a_pid" || fail "device A's leg was not ended with a BYE"
echo "device A's leg ended by the proxy's BYE"
wait "$bob_pid" || fail "bob's scenario failed (bob must see one call, then a BYE)"
echo "bob saw one INVITE and one BYE: no re-INVITE, no Replaces"
wait "$media_pid" || status=$?
cat "$logs/media.log"
[ "$status" = 0 ] || fail "bob did not receive one continuous stream"
grep -q "the session had no AOR" "$logs/baton.log" && fail "the initial offer did not carry the AOR"
echo "PASS"
