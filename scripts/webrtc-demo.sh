#!/usr/bin/env bash
# A browser's call through baton, handed to a desk phone mid-call, and what
# the far end heard.
#
# Starts a relay, serves a page to headless Chromium (fake microphone) that
# calls a SIP-side phone through baton with its own ICE, DTLS-SRTP and
# BUNDLE (the page is tests/webrtc/page.html, the one the tests use), bridges
# it to plain RTP toward the phone, then hands the call to a second device
# (plain RTP) after a few seconds. Prints the page's getStats() and what the
# phone received: SSRCs, sequence errors, packets from each device.
#
# Usage: scripts/webrtc-demo.sh [SECONDS]     (default 8)
#   BATON=path/to/baton to use a given binary (default: builds --release).
# Needs chromium and python3. Everything runs on 127.0.0.1 and stops by
# itself; as root it runs in a network namespace with only loopback, so the
# browser has no other address to use.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-8}"

if [[ -z "${BATON:-}" ]]; then
  cargo build --release --quiet
  BATON=./target/release/baton
fi
BATON=$(realpath "$BATON")
command -v chromium >/dev/null || { echo "webrtc-demo: needs chromium (apt-get install chromium)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "webrtc-demo: needs python3" >&2; exit 2; }

if [[ -z "${WEBRTC_DEMO_NETNS:-}" && "$(id -u)" == 0 ]] && command -v unshare >/dev/null; then
  exec env WEBRTC_DEMO_NETNS=1 BATON="$BATON" unshare --net "$0" "$seconds"
fi
if [[ -n "${WEBRTC_DEMO_NETNS:-}" ]]; then
  ip link set lo up
fi

work=$(mktemp -d)
relay_pid=""
browser_pid=""
cleanup() {
  [[ -n "$browser_pid" ]] && kill "$browser_pid" 2>/dev/null || true
  [[ -n "$relay_pid" ]] && kill "$relay_pid" 2>/dev/null && wait "$relay_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

socket="$work/control.sock"
"$BATON" run --control "unix:$socket" --media-ip 127.0.0.1 --ports 42000-42999 \
  2> "$work/relay.log" &
relay_pid=$!
for _ in $(seq 100); do [[ -S "$socket" ]] && break; sleep 0.05; done
[[ -S "$socket" ]] || { echo "relay did not start:"; cat "$work/relay.log"; exit 1; }
echo "relay running (pid $relay_pid), control unix:$socket"

BATON="$BATON" CONTROL="unix:$socket" SECONDS_TOTAL="$seconds" WORK="$work" \
  PAGE="tests/webrtc/page.html" python3 - <<'PY'
import http.server, json, os, random, re, socket, struct, subprocess, threading, time

baton, control, work = os.environ["BATON"], os.environ["CONTROL"], os.environ["WORK"]
total = float(os.environ["SECONDS_TOTAL"])
page = open(os.environ["PAGE"], "rb").read()
aor = "sip:alice@example.com"
gruu_browser = aor + ";gr=urn:uuid:7d3a0c1e-1b2f-4c5d-8e9f-a0b1c2d3e4f5"
gruu_desk = aor + ";gr=urn:uuid:0c5b4e1e-3b7a-4d8e-9a5c-2d8f6c1b9e42"

def ctl(*args):
    out = subprocess.run([baton, "ctl", "--control", control, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"baton ctl {args[0]} failed: {out.stderr.strip()}")
    return json.loads(out.stdout)

def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s

def media_address(sdp):
    ip = re.search(r"^c=IN IP4 (\S+)", sdp, re.M).group(1)
    port = int(re.search(r"^m=audio (\d+)", sdp, re.M).group(1))
    return ip, port

phone, desk = udp(), udp()
state = {"session": None, "phone_to": None, "stats": None, "answered": None}
done = threading.Event()

class Page(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def reply(self, body, kind="text/plain"):
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self.reply(page, "text/html")
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        if self.path.startswith("/offer"):
            offer, to_phone, answer, to_browser = (os.path.join(work, n) for n in
                ("browser.sdp", "to-phone.sdp", "phone.sdp", "to-browser.sdp"))
            open(offer, "w").write(body)
            created = ctl("create", "--call-id", "webrtc-demo", "--from-tag", "b1", "--aor", aor,
                          "--gruu", gruu_browser, "--sdp", offer, "--other-transport", "RTP/AVP",
                          "--sdp-out", to_phone)
            state["session"] = created["session"]
            state["phone_to"] = media_address(open(to_phone).read())
            ip, port = phone.getsockname()
            open(answer, "w").write(f"v=0\r\no=phone 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
                                    f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")
            ctl("update", "--session", state["session"], "--set-to-tag", "p2", "--sdp", answer,
                "--sdp-from", "remote", "--sdp-out", to_browser)
            sdp = open(to_browser).read()
            print("answer to the browser (the relay's WebRTC lines):")
            for line in sdp.splitlines():
                if re.match(r"a=(ice-lite|ice-ufrag|candidate|fingerprint|setup|mid|group|rtcp-mux)", line) \
                        or line.startswith("m="):
                    print("   ", line)
            state["answered"] = time.monotonic()
            self.reply(sdp.encode())
        else:
            state["stats"] = json.loads(body)
            self.reply(b"")
            done.set()

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{server.server_address[1]}/?ms={int(total * 1000)}&bundle=max-bundle"
profile = os.path.join(work, "chromium")
browser = subprocess.Popen(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                            "--no-first-run", "--disable-background-networking", "--disable-component-update",
                            "--disable-sync", "--use-fake-device-for-media-stream",
                            "--use-fake-ui-for-media-stream", "--allow-loopback-in-peer-connection",
                            "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={profile}", url],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(f"chromium loading {url}")
while state["answered"] is None:
    if browser.poll() is not None:
        raise SystemExit("chromium exited before calling")
    time.sleep(0.05)

received = []   # (arrival, seq, ts, ssrc, first payload byte)
def talk_and_listen():
    seq, ts, ssrc = random.getrandbits(16), random.getrandbits(32), random.getrandbits(32)
    desk_seq, desk_ts = random.getrandbits(16), random.getrandbits(32)
    start, tick, desk_to = time.monotonic(), 0, None
    while not done.is_set() and time.monotonic() - start < total + 5:
        phone.sendto(struct.pack("!BBHII", 0x80, 0, seq, ts, ssrc) + b"\xff" * 160, state["phone_to"])
        seq, ts = (seq + 1) & 0xFFFF, (ts + 160) & 0xFFFFFFFF
        elapsed = time.monotonic() - start
        if desk_to is None and elapsed >= total / 2:
            t = ctl("transfer", "--session", state["session"], "--gruu", gruu_desk,
                    "--user-peer", "%s:%d" % desk.getsockname())
            desk_to = tuple(t["streams"][0]["user"]["rtp"].rsplit(":", 1))
            desk_to = (desk_to[0], int(desk_to[1]))
            print(f"{elapsed:5.2f}s the desk phone takes the call (the switch happens on its first packet; the browser's media is dropped from then on)")
        if desk_to is not None:
            desk.sendto(struct.pack("!BBHII", 0x80, 0, desk_seq, desk_ts, 0xDE5C) + b"\x11" * 160, desk_to)
            desk_seq, desk_ts = (desk_seq + 1) & 0xFFFF, (desk_ts + 160) & 0xFFFFFFFF
        while True:
            try:
                data, _ = phone.recvfrom(2048)
            except BlockingIOError:
                break
            if len(data) > 12 and data[1] & 0x7F == 0:
                _, seq_in, ts_in, ssrc_in = struct.unpack("!xBHII", data[:12])
                received.append((time.monotonic(), seq_in, ts_in, ssrc_in, data[12]))
        tick += 1
        time.sleep(max(0.0, start + tick * 0.02 - time.monotonic()))

talker = threading.Thread(target=talk_and_listen, daemon=True)
talker.start()
done.wait(total + 30)
talker.join(5)
browser.terminate()
stats = state["stats"] or {"error": "no stats from the page"}
print()
print("the page's getStats():", json.dumps(stats))
ssrcs = sorted({r[3] for r in received})
errors = sum(1 for p, c in zip(received, received[1:]) if c[1] != (p[1] + 1) & 0xFFFF)
from_desk = sum(1 for r in received if r[4] == 0x11)
print(f"the phone received {len(received)} packets: from the browser {len(received) - from_desk}, from the desk phone {from_desk}")
print(f"  SSRCs seen: {len(ssrcs)}; sequence errors (gap or repeat): {errors}")
ok = (stats.get("connection") == "connected" and stats.get("inbound", 0) > 0 and len(ssrcs) == 1
      and errors == 0 and from_desk > 0 and len(received) - from_desk > 0)
print()
print("RESULT: " + ("the browser connected (ICE, DTLS), heard the phone, and the phone heard one "
                    "continuous stream across the handoff" if ok else "NOT as expected"))
raise SystemExit(0 if ok else 1)
PY
