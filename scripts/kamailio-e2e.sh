#!/usr/bin/env bash
# End to end with a real SIP proxy: Kamailio (registrar with GRUU, the
# rtpengine module pointed at baton's ng listener) running
# contrib/kamailio/kamailio.cfg as shipped (settings in a
# kamailio-baton-local.cfg beside it), and SIPp user agents.
#
# Usage: scripts/kamailio-e2e.sh [CASE]      (default: basic)
#   basic   device A calls bob; device B of the same user registers (digest;
#           its public GRUU comes from the registrar) and sends INVITE with
#           Replaces naming A's dialog as A sees it; the proxy authenticates
#           it, hands the call over through baton, answers B and BYEs A; B
#           talks and hangs up, and bob gets a BYE in his own dialog.
#   held    the same, but B uses its temporary GRUU (the proxy sent baton
#           the registrar's binding) and a Replaces with the tags the other
#           way round; after the handoff bob puts the call on hold (B gets
#           the re-INVITE in its own dialog and answers) and hangs up (B
#           gets the BYE).
#   chain   A -> B -> A -> C: B takes the call from A, A takes it back
#           (naming B's dialog with the proxy), C takes it from A (with its
#           temporary GRUU); each device that gave the call away gets a BYE
#           in its own dialog, bob hears one stream through three switches
#           and gets C's BYE in his dialog.
#   callee  bob calls alice: her device A (registered) answers, B takes the
#           call (naming A's dialog), talks and hangs up; bob gets the BYE
#           in his dialog, A gets the proxy's BYE.
#   refused B tries to take the call without a GRUU (421, Require: gruu),
#           then with no codec bob has (baton refuses: 488); the call stays
#           with A (one stream, no switch) until bob hangs up.
#   routed  as basic, with a record-routing proxy between Kamailio and bob
#           (OUTBOUND_PROXY, scripts/e2e/rr_proxy.py): B's BYE reaches bob
#           through it, by the route set of bob's dialog.
#   withdrawn B cancels its handoff INVITE after the proxy's 200 OK won the
#           race (CANCEL, then ACK and BYE), sending media meanwhile: none
#           of it reaches bob (the switch waits for B's confirmed dialog),
#           the handoff is rolled back at once, A is not told and keeps the
#           call until bob hangs up.
#   relayset as basic, with Kamailio's relay set of two: an active/standby pair
#           of batons sharing a Redis and the floating address 127.0.0.3
#           (ng and media), and a single baton on 127.0.0.1, weight 1
#           each. The call (its Call-ID chosen for the pair) is handed over
#           on the active, which is then killed (SIGKILL) while B talks: the
#           standby takes over, bob hears one stream with one forward jump
#           (the packets lost meanwhile), and B's BYE reaches the standby.
#   relayset-down the same relay set, a Call-ID the module would give the
#           single baton, which is killed before the call: the call goes to
#           the pair, and is handed over there.
# Then: what bob received (one SSRC, no sequence gap, timestamps never
# backwards, A's media then B's), and `baton ctl list` is empty.
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

case_name=${1:-basic}
case "$case_name" in
    basic | held | chain | callee | refused | withdrawn | routed | relayset | relayset-down) ;;
    *) echo "unknown case $case_name (basic, held, chain, callee, refused, withdrawn, routed, relayset, relayset-down)" >&2; exit 2 ;;
esac

base=${E2E_BASE:-25060}
sip_port=$base
ng_port=$((base + 1))
control_port=$((base + 2))
loop_port=$((base + 3))
bob_sip=$((base + 10))
a_sip=$((base + 11))
b_sip=$((base + 12))
a2_sip=$((base + 13))
c_sip=$((base + 14))
bob_rtp=$((base + 20))
a_rtp=$((base + 22))
b_rtp=$((base + 24))
a2_rtp=$((base + 26))
c_rtp=$((base + 28))
rr_port=$((base + 30))
redis_port=$((base + 40))
q_ng_port=$((base + 41))
q_control_port=$((base + 42))
standby_control_port=$((base + 43))
relay_ip=127.0.0.1
media_lo=$((base + 1000))
media_hi=$((base + 1999))
password=e2e-digest-secret
call_id="baton-e2e-$$@127.0.0.1"
relay_set=0
case "$case_name" in relayset*) relay_set=1 ;; esac
if [ "$relay_set" = 1 ]; then
    # Kamailio 5.6's rtpengine module picks a relay of the set by the sum of
    # the Call-ID's bytes modulo the weights' sum: even is the first relay
    # (the pair), odd the second (the single baton). "y" is odd: prepended,
    # it flips the sum's parity.
    want=0
    [ "$case_name" = relayset-down ] && want=1
    if [ $(( $(printf '%s' "$call_id" | od -An -tu1 | tr -s ' ' '\n' | awk '{s += $1} END {print s}') % 2 )) != "$want" ]; then
        call_id="y$call_id"
    fi
fi

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
    echo "--- baton's sessions and bindings"
    "$BATON" ctl --control "tcp:127.0.0.1:$control_port" list 2>&1 || true
    "$BATON" ctl --control "tcp:127.0.0.1:$control_port" bindings 2>&1 || true
    exit 1
}

# baton, with the ng listener Kamailio will use.
baton_ng="udp:127.0.0.1:$ng_port"
if [ "$relay_set" = 1 ]; then
    command -v redis-server >/dev/null || fail "relayset needs redis-server"
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$logs" \
        >"$logs/redis.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    relay_ip=127.0.0.3
    ha=(--redis "redis://127.0.0.1:$redis_port" --redis-key-prefix e2e --heartbeat-interval 0.1
        --heartbeat-timeout 0.5 --snapshot-interval 0.2 --media-ip "$relay_ip"
        --listen-ng "udp:$relay_ip:$ng_port" --ports "$media_lo-$((media_lo + 499))")
    timeout 90 "$BATON" run --control "tcp:127.0.0.1:$control_port" "${ha[@]}" --redis-instance pair-a \
        >"$logs/baton.log" 2>&1 &
    pids+=($!)
    active_pid=$!
    timeout 90 "$BATON" run --control "tcp:127.0.0.1:$standby_control_port" "${ha[@]}" \
        --redis-instance pair-b --redis-standby >"$logs/baton-standby.log" 2>&1 &
    pids+=($!)
    timeout 90 "$BATON" run --control "tcp:127.0.0.1:$q_control_port" \
        --listen-ng "udp:127.0.0.1:$q_ng_port" --ports "$((media_lo + 500))-$media_hi" \
        >"$logs/baton-single.log" 2>&1 &
    pids+=($!)
    single_pid=$!
    baton_ng="udp:$relay_ip:$ng_port=1 udp:127.0.0.1:$q_ng_port=1"
else
    timeout 90 "$BATON" run --control "tcp:127.0.0.1:$control_port" \
        --listen-ng "$baton_ng" --ports "$media_lo-$media_hi" \
        >"$logs/baton.log" 2>&1 &
    pids+=($!)
fi
for _ in $(seq 50); do
    "$BATON" ctl --control "tcp:127.0.0.1:$control_port" ping >/dev/null 2>&1 && break
    sleep 0.1
done
"$BATON" ctl --control "tcp:127.0.0.1:$control_port" ping >/dev/null || fail "baton did not start"
if [ "$relay_set" = 1 ]; then
    for port in "$q_control_port" "$standby_control_port"; do
        for _ in $(seq 50); do
            "$BATON" ctl --control "tcp:127.0.0.1:$port" ping >/dev/null 2>&1 && break
            sleep 0.1
        done
        "$BATON" ctl --control "tcp:127.0.0.1:$port" ping >/dev/null || fail "a baton of the relay set did not start"
    done
fi

# Kamailio in the foreground, with the config as shipped and this run's
# settings beside it.
kamailio -c -f contrib/kamailio/kamailio.cfg >"$logs/kamailio-check.log" 2>&1 \
    || fail "contrib/kamailio/kamailio.cfg does not pass kamailio -c as shipped"
cp contrib/kamailio/kamailio.cfg "$logs/kamailio.cfg"
printf '%s\n' "#!substdef \"!SIP_PORT!$sip_port!g\"" "#!substdef \"!LOOP_PORT!$loop_port!g\"" \
    "#!substdef \"!BATON_NG!$baton_ng!g\"" "#!substdef \"!DEMO_PASSWORD!$password!g\"" \
    >"$logs/kamailio-baton-local.cfg"
if [ "$case_name" = routed ]; then
    echo "#!substdef \"!OUTBOUND_PROXY!sip:127.0.0.1:$rr_port!g\"" >>"$logs/kamailio-baton-local.cfg"
    timeout 80 python3 scripts/e2e/rr_proxy.py "$rr_port" "$logs/rr-proxy.txt" --seconds 75 >"$logs/rr-proxy.log" 2>&1 &
    pids+=($!)
fi
timeout 90 kamailio -f "$logs/kamailio.cfg" -DD -E -m 64 -M 8 -w "$logs" -Y "$logs" \
    >"$logs/kamailio.log" 2>&1 &
pids+=($!)
kamailio_pid=$!
for _ in $(seq 50); do
    grep -q "rtpengine.*pong\|udp: 127.0.0.1" "$logs/kamailio.log" 2>/dev/null && break
    sleep 0.1
done
sleep 0.5
kill -0 "$kamailio_pid" 2>/dev/null || fail "kamailio did not start"
if [ "$case_name" = relayset-down ]; then
    # The single baton dies before the call its Call-ID would go to.
    pkill -KILL -P "$single_pid" || fail "the single baton was not running"
    echo "the single baton of the relay set was killed before the call"
fi

sipp_common=(-i 127.0.0.1 -m 1 -timeout 40s -timeout_error -nostdin -trace_err
    -key bob_port "$bob_sip" -key proxy_port "$sip_port")

# One of the user's devices taking the call: a variant of alice_b.xml
# (variant.py) run by SIPp. Arguments: name, SIP port, RTP port, From tag,
# Replaces value, then variant.py options. Its relay port goes to
# $logs/<name>-relay-port, the proxy's tag in its dialog (with
# --write-dialog) to $logs/<name>-dialog; its Call-ID is
# baton-e2e-<name>-$$@127.0.0.1.
start_device() {
    local name=$1 port=$2 rtp=$3 tag=$4 replaces=$5
    shift 5
    python3 scripts/e2e/variant.py "${device_scenario:-scripts/e2e/alice_b.xml}" "$@" >"$logs/alice_$name.xml"
    timeout 60 sipp "${sipp_common[@]}" -sf "$logs/alice_$name.xml" -p "$port" \
        -cid_str "baton-e2e-$name-$$@127.0.0.1" -key b_tag "$tag" -key b_rtp_port "$rtp" \
        -key replaces "$replaces" -key dialog_file "$logs/$name-dialog" -key gruu_file "$logs/$name-gruu" \
        -key b_relay_file "$logs/$name-relay-port" -au alice -ap "$password" -d "${device_pause:-2000}" \
        -error_file "$logs/$name-errors.log" "127.0.0.1:$sip_port" >"$logs/alice-$name.log" 2>&1 &
    pids+=($!)
    device_pid=$!
}

# Waits (bounded) for a file a scenario writes, and prints it.
wait_file() {
    for _ in $(seq 150); do [ -s "$1" ] && break; sleep 0.1; done
    [ -s "$1" ] || fail "$2"
    cat "$1"
}

# The Replaces value naming the dialog device <name> has with the proxy.
dialog_of() {
    local tag
    tag=$(wait_file "$logs/$1-dialog" "device $1 did not answer")
    echo "baton-e2e-$1-$$@127.0.0.1;to-tag=${tag#;tag=};from-tag=$2"
}

bob_scenario=scripts/e2e/bob.xml
bob_target=()
devices=(--device "A:$a_rtp:$logs/a-relay-port" --device "B:$b_rtp:$logs/b-relay-port")
if [ "$case_name" = held ]; then
    bob_scenario=scripts/e2e/bob_holds_and_hangs_up.xml
elif [ "$case_name" = refused ] || [ "$case_name" = withdrawn ]; then
    bob_scenario=scripts/e2e/bob_hangs_up.xml
    devices=(--device "A:$a_rtp:$logs/a-relay-port")
    # A withdrawing B sends media from its 200 OK on: none may reach bob.
    [ "$case_name" = withdrawn ] && devices+=(--unheard "B:$b_rtp:$logs/b-relay-port")
elif [ "$case_name" = callee ]; then
    bob_scenario=scripts/e2e/bob_calls.xml
    bob_target=(-cid_str "$call_id" "127.0.0.1:$sip_port")
elif [ "$case_name" = chain ]; then
    devices+=(--device "A2:$a2_rtp:$logs/a2-relay-port" --device "C:$c_rtp:$logs/c-relay-port")
fi

# Device A registers (then calls, or answers, from the same port).
timeout 30 sipp "${sipp_common[@]}" -sf scripts/e2e/register.xml -p "$a_sip" -key instance 0a \
    -au alice -ap "$password" -error_file "$logs/register-a-errors.log" "127.0.0.1:$sip_port" \
    >"$logs/register-a.log" 2>&1 || fail "device A did not register"
if [ "$case_name" = callee ]; then
    timeout 60 sipp "${sipp_common[@]}" -sf scripts/e2e/alice_a_answers.xml -p "$a_sip" \
        -key a_tag alice-a-tag-1 -key a_rtp_port "$a_rtp" -key a_relay_file "$logs/a-relay-port" \
        -error_file "$logs/a-errors.log" >"$logs/alice-a.log" 2>&1 &
    a_pid=$!
    pids+=($a_pid)
    sleep 0.5
fi

# bob answers (or, for a call to alice, calls); his RTP socket belongs to
# media.py.
timeout 60 sipp "${sipp_common[@]}" -sf "$bob_scenario" -p "$bob_sip" \
    -key bob_tag bob-tag-1 -key bob_rtp_port "$bob_rtp" -d 7000 \
    -error_file "$logs/bob-errors.log" "${bob_target[@]}" >"$logs/bob.log" 2>&1 &
bob_pid=$!
pids+=($bob_pid)

last_seconds=2
if [ "$case_name" = refused ] || [ "$case_name" = withdrawn ]; then last_seconds=8; fi
# B talks on past the failover.
[ "$case_name" = relayset ] && last_seconds=5
failovers=0
[ "$case_name" = relayset ] && failovers=1
timeout 70 python3 scripts/e2e/media.py --bob-port "$bob_rtp" "${devices[@]}" \
    --last-seconds "$last_seconds" --pcap "$logs/bob.pcap" --relay-ip "$relay_ip" \
    --failovers "$failovers" >"$logs/media.log" 2>&1 &
media_pid=$!
pids+=($media_pid)

if [ "$case_name" != callee ]; then
    # Device A calls bob through the proxy.
    timeout 60 sipp "${sipp_common[@]}" -sf scripts/e2e/alice_a.xml -p "$a_sip" \
        -cid_str "$call_id" -key a_tag alice-a-tag-1 -key a_rtp_port "$a_rtp" \
        -key a_relay_file "$logs/a-relay-port" -au alice -ap "$password" \
        -error_file "$logs/a-errors.log" "127.0.0.1:$sip_port" >"$logs/alice-a.log" 2>&1 &
    a_pid=$!
    pids+=($a_pid)
fi

echo "call up: device A <-> bob, relay port for A: $(wait_file "$logs/a-relay-port" "device A's call was not answered")"
sleep 2

case "$case_name" in
    refused)
        device_scenario=scripts/e2e/alice_b_refused.xml \
            start_device b "$b_sip" "$b_rtp" alice-b-tag-1 "$call_id;to-tag=bob-tag-1;from-tag=alice-a-tag-1"
        wait "$device_pid" || fail "device B's scenario failed (421 without a GRUU, 488 without a common codec)"
        echo "device B was refused twice (421 Require: gruu; 488 no common codec) and the call stayed with A"
        ;;
    withdrawn)
        start_device b "$b_sip" "$b_rtp" alice-b-tag-1 "$call_id;to-tag=bob-tag-1;from-tag=alice-a-tag-1" --withdraws
        wait "$device_pid" || fail "device B's scenario failed (handoff INVITE, 200 OK, CANCEL, ACK, BYE)"
        echo "device B withdrew after the proxy's 200 OK and the call stayed with A"
        ;;
    callee)
        # B takes the call, naming A's dialog (A is its callee).
        start_device b "$b_sip" "$b_rtp" alice-b-tag-1 "$call_id;to-tag=alice-a-tag-1;from-tag=bob-tag-1"
        wait "$device_pid" || fail "device B's scenario failed (register, handoff of a call to alice, talk, hang up)"
        ;;
    basic | routed)
        # B takes the call, naming A's dialog as A sees it; talks, hangs up.
        start_device b "$b_sip" "$b_rtp" alice-b-tag-1 "$call_id;to-tag=bob-tag-1;from-tag=alice-a-tag-1"
        wait "$device_pid" || fail "device B's scenario failed (register, handoff, talk, hang up)"
        ;;
    relayset-down)
        # The module gave up the dead relay and took the pair.
        sessions=$("$BATON" ctl --control "tcp:127.0.0.1:$control_port" stats \
            | python3 -c 'import json, sys; print(json.load(sys.stdin)["sessions"])')
        [ "$sessions" = 1 ] || fail "the call did not go to the live relay of the set ($sessions sessions)"
        echo "the call went to the relay set's live relay"
        start_device b "$b_sip" "$b_rtp" alice-b-tag-1 "$call_id;to-tag=bob-tag-1;from-tag=alice-a-tag-1"
        wait "$device_pid" || fail "device B's scenario failed (register, handoff, talk, hang up)"
        ;;
    relayset)
        # The pair's active relay carries the call; B takes it, and while B
        # talks the active dies.
        sessions=$("$BATON" ctl --control "tcp:127.0.0.1:$control_port" stats \
            | python3 -c 'import json, sys; print(json.load(sys.stdin)["sessions"])')
        [ "$sessions" = 1 ] || fail "the call is not on the pair's active relay ($sessions sessions)"
        # B talks for 4 s: the failover (0.5 s heartbeat timeout) comes well
        # before its BYE.
        device_pause=4000 start_device b "$b_sip" "$b_rtp" alice-b-tag-1 "$call_id;to-tag=bob-tag-1;from-tag=alice-a-tag-1"
        wait_file "$logs/b-relay-port" "device B's handoff was not answered" >/dev/null
        sleep 0.5
        # SIGKILL to baton itself (its parent is `timeout`).
        pkill -KILL -P "$active_pid" || fail "the pair's active relay was not running"
        echo "the pair's active relay was killed while B talked"
        for _ in $(seq 50); do
            "$BATON" ctl --control "tcp:127.0.0.1:$standby_control_port" stats 2>/dev/null \
                | grep -q '"role":"active"' && break
            sleep 0.1
        done
        "$BATON" ctl --control "tcp:127.0.0.1:$standby_control_port" stats >"$logs/standby-stats.json"
        wait "$device_pid" || fail "device B's scenario failed (register, handoff, talk through the failover, hang up)"
        python3 -c '
import json, sys
ha = json.load(open(sys.argv[1]))["ha"]
assert ha["role"] == "active" and ha["sessions_resumed"] == "1", ha
print("the standby took the call over in " + ha["last_takeover_ms"] + " ms")
' "$logs/standby-stats.json" || fail "the standby did not take the call over"
        control_port=$standby_control_port
        ;;
    held)
        # B takes the call with its temporary GRUU and the tags the other
        # way round (RFC 3891 allows either reading), then stays.
        start_device b "$b_sip" "$b_rtp" alice-b-tag-1 "$call_id;to-tag=alice-a-tag-1;from-tag=bob-tag-1" \
            --temp-gruu --stays
        wait "$device_pid" || fail "device B's scenario failed (register, handoff, the remote's hold re-INVITE and BYE in B's dialog)"
        echo "device B got the remote's re-INVITE and BYE in its own dialog, and its own re-INVITE reached bob in his"
        # B unregistered at the end: its temporary GRUU is no longer bound.
        bindings=$("$BATON" ctl --control "tcp:127.0.0.1:$control_port" bindings)
        grep -q "temporary" <<<"$bindings" || fail "no temporary binding left (A's should be): $bindings"
        if grep -qF "$(cat "$logs/b-gruu")" <<<"$bindings"; then
            fail "B's temporary GRUU is still bound after B unregistered: $bindings"
        fi
        echo "device B's temporary GRUU was unbound when it unregistered"
        ;;
    chain)
        # A -> B -> A -> C: each takes the call from the device holding it,
        # naming that device's dialog with the proxy.
        start_device b "$b_sip" "$b_rtp" alice-b-tag-1 "$call_id;to-tag=bob-tag-1;from-tag=alice-a-tag-1" \
            --replaced --write-dialog
        b_pid=$device_pid
        replaces=$(dialog_of b alice-b-tag-1)
        sleep 2
        start_device a2 "$a2_sip" "$a2_rtp" alice-a2-tag-1 "$replaces" --instance 0a --replaced --write-dialog
        a2_pid=$device_pid
        replaces=$(dialog_of a2 alice-a2-tag-1)
        sleep 2
        start_device c "$c_sip" "$c_rtp" alice-c-tag-1 "$replaces" --instance 0c --temp-gruu
        wait "$device_pid" || fail "device C's scenario failed (register, handoff from A's second leg, talk, hang up)"
        wait "$b_pid" || fail "device B's leg was not ended by the proxy's BYE in B's dialog when A took the call back"
        echo "device B's leg ended by the proxy's BYE in its own dialog"
        wait "$a2_pid" || fail "device A's second leg was not ended by the proxy's BYE when C took the call"
        echo "device A's second leg ended by the proxy's BYE in its own dialog"
        ;;
esac
if [ "$case_name" = refused ] || [ "$case_name" = withdrawn ]; then
    wait "$a_pid" || fail "device A's call was not ended by bob's BYE"
    echo "device A's call ended by bob's BYE"
else
    echo "handoff: device B answered by the proxy, relay port for B: $(cat "$logs/b-relay-port")"
    wait "$a_pid" || fail "device A's leg was not ended with a BYE"
    echo "device A's leg ended by the proxy's BYE"
fi
if [ "$case_name" = held ]; then
    wait "$bob_pid" || fail "bob's scenario failed (his hold and BYE must be answered in his dialog)"
    echo "bob's hold re-INVITE and BYE were answered in his own dialog"
else
    wait "$bob_pid" || fail "bob's scenario failed (bob must see one call, then a BYE in his dialog)"
    echo "bob's one dialog ended by one BYE in it: no re-INVITE, no Replaces"
fi
status=0
wait "$media_pid" || status=$?
cat "$logs/media.log"
[ "$status" = 0 ] || fail "bob did not receive one continuous stream"
# tshark's own RTP analysis of what bob received (CI installs tshark and
# sets BATON_REQUIRE_TSHARK).
if command -v tshark >/dev/null; then
    tshark -n -q -r "$logs/bob.pcap" -d "udp.port==$bob_rtp,rtp" -z rtp,streams >"$logs/tshark.txt" 2>&1 \
        || fail "tshark could not read bob's capture"
    streams=$(grep -c " 0x[0-9A-Fa-f]\{8\} " "$logs/tshark.txt" || true)
    problems=$(grep " 0x[0-9A-Fa-f]\{8\} " "$logs/tshark.txt" | grep -c " X *$" || true)
    lost=$(grep " 0x[0-9A-Fa-f]\{8\} " "$logs/tshark.txt" | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^\(/) print $(i - 1)}' | head -1)
    cat "$logs/tshark.txt"
    if [ "$case_name" = relayset ]; then
        # The failover lost packets (and tshark flags the jump): one stream.
        [ "$streams" = 1 ] || fail "tshark: $streams stream(s) in bob's capture"
        echo "tshark: one RTP stream at bob, $lost lost in the failover"
    else
        [ "$streams" = 1 ] && [ "$problems" = 0 ] && [ "$lost" = 0 ] \
            || fail "tshark: $streams stream(s), $problems with problems, $lost lost in bob's capture"
        echo "tshark: one RTP stream at bob, nothing lost, no problem"
    fi
elif [ -n "${BATON_REQUIRE_TSHARK:-}" ]; then
    fail "BATON_REQUIRE_TSHARK is set but tshark is missing"
fi
grep -q "the session had no AOR" "$logs/baton.log" && fail "the initial offer did not carry the AOR"
if [ "$case_name" = routed ]; then
    grep -q "^request INVITE sip:bob" "$logs/rr-proxy.txt" || fail "the INVITE did not go through the second proxy"
    grep -q "^request BYE " "$logs/rr-proxy.txt" || fail "B's BYE did not reach bob through the second proxy"
    echo "B's BYE reached bob through the proxy his dialog was routed by"
fi
# Nothing left behind on the relay.
left=""
for _ in $(seq 30); do
    left=$("$BATON" ctl --control "tcp:127.0.0.1:$control_port" list \
        | python3 -c 'import json, sys; print(len(json.load(sys.stdin).get("sessions", [])))')
    [ "$left" = 0 ] && break
    sleep 0.1
done
[ "$left" = 0 ] || fail "baton still lists $left session(s) after the call"
echo "baton lists no session afterwards"
echo "PASS"
