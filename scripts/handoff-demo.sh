#!/usr/bin/env bash
# A live call handed from one device to another, and what the far end heard.
#
# Starts a relay, plays a call between device A and a remote party with real
# RTP (20 ms PCMU packets, each side with its own SSRC, sequence and clock),
# transfers it to device B mid-call (B's own SSRC and numbering), and
# analyses the stream the remote received: SSRCs, sequence errors, markers,
# the timestamp step at the switch against the time that passed. With tshark
# installed it also captures the remote's port and prints tshark's own RTP
# stream analysis.
#
# Usage: scripts/handoff-demo.sh [SECONDS] [--plot FILE.svg]   (default 4 s)
#   --plot FILE.svg also draws what the remote received around the switch:
#   sequence number and timestamp against arrival time, one colour per
#   device (the README's picture comes from here).
#   BATON=path/to/baton to use a given binary (default: builds --release).
#   NO_TSHARK=1 skips the tshark capture even when tshark is installed.
# Everything runs on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=4
plot=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --plot) plot="${2:?--plot needs a file name}"; shift 2 ;;
    *) seconds="$1"; shift ;;
  esac
done
[[ -z "$plot" || "$plot" = /* ]] || plot="$PWD/$plot"

if [[ -z "${BATON:-}" ]]; then
  cargo build --release --quiet
  BATON=./target/release/baton
fi
command -v python3 >/dev/null || { echo "handoff-demo: needs python3" >&2; exit 2; }

work=$(mktemp -d)
relay_pid=""
capture_pid=""
cleanup() {
  [[ -n "$capture_pid" ]] && kill "$capture_pid" 2>/dev/null || true
  [[ -n "$relay_pid" ]] && kill "$relay_pid" 2>/dev/null && wait "$relay_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

socket="$work/control.sock"
"$BATON" run --control "unix:$socket" --media-ip 127.0.0.1 --ports 41000-41999 \
  2> "$work/relay.log" &
relay_pid=$!
for _ in $(seq 100); do [[ -S "$socket" ]] && break; sleep 0.05; done
[[ -S "$socket" ]] || { echo "relay did not start:"; cat "$work/relay.log"; exit 1; }
echo "relay running (pid $relay_pid), control unix:$socket"

BATON="$BATON" CONTROL="unix:$socket" SECONDS_TOTAL="$seconds" WORK="$work" PLOT="$plot" python3 - <<'PY'
import json, os, random, socket, struct, subprocess, threading, time, shutil

baton, control, work = os.environ["BATON"], os.environ["CONTROL"], os.environ["WORK"]
total = float(os.environ["SECONDS_TOTAL"])

def ctl(*args):
    out = subprocess.run([baton, "ctl", "--control", control, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"baton ctl {args[0]} failed: {out.stderr.strip()}")
    return json.loads(out.stdout)

def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.2)
    return s

def addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)

device_a, device_b, remote = udp(), udp(), udp()
aor = "sip:alice@example.com"
gruu_a = aor + ";gr=urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
gruu_b = aor + ";gr=urn:uuid:0c5b4e1e-3b7a-4d8e-9a5c-2d8f6c1b9e42"

# The remote's port is captured when tshark is there to analyse it.
capture = None
use_tshark = shutil.which("tshark") and not os.environ.get("NO_TSHARK")
if use_tshark:
    pcap = os.path.join(work, "remote.pcap")
    port = remote.getsockname()[1]
    capture = subprocess.Popen(["tshark", "-q", "-i", "lo", "-f", f"udp port {port}", "-w", pcap],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)

created = ctl("create", "--call-id", "demo-call", "--from-tag", "a1", "--to-tag", "r1",
              "--aor", aor, "--gruu", gruu_a, "--stream", "audio:0/PCMU/8000,101/telephone-event/8000",
              "--rtcp-mux", "--user-peer", "%s:%d" % device_a.getsockname(),
              "--remote-peer", "%s:%d" % remote.getsockname())
session = created["session"]
user_relay = addr(created["streams"][0]["user"]["rtp"])
remote_relay = addr(created["streams"][0]["remote"]["rtp"])
print(f"session {session}: device A -> {user_relay[0]}:{user_relay[1]}, remote -> {remote_relay[0]}:{remote_relay[1]}")

class Talker:
    def __init__(self, name, sock, to, tag):
        self.name, self.sock, self.to, self.tag = name, sock, to, tag
        self.ssrc = random.getrandbits(32)
        self.seq = random.getrandbits(16)
        self.ts = random.getrandbits(32)
    def send(self):
        header = struct.pack("!BBHII", 0x80, 0, self.seq, self.ts, self.ssrc)
        self.sock.sendto(header + bytes([self.tag]) * 160, self.to)
        self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + 160) & 0xFFFFFFFF

received = []          # (arrival, seq, ts, ssrc, marker, tag) at the remote
heard = {"A": 0, "B": 0}
stop = threading.Event()

def listen(sock, name):
    while not stop.is_set():
        try:
            data, _ = sock.recvfrom(2048)
        except socket.timeout:
            continue
        if name == "remote":
            b1, seq, ts, ssrc = struct.unpack("!xBHII", data[:12])
            received.append((time.monotonic(), seq, ts, ssrc, bool(b1 & 0x80), data[12]))
        else:
            heard[name] += 1

threads = [threading.Thread(target=listen, args=(s, n), daemon=True)
           for s, n in ((remote, "remote"), (device_a, "A"), (device_b, "B"))]
for t in threads:
    t.start()

a = Talker("A", device_a, user_relay, ord("A"))
far = Talker("remote", remote, remote_relay, ord("R"))
b = None
transfer_at, b_starts, a_stops = total * 0.35, total * 0.5, total * 0.5 + 0.1
start = time.monotonic()
tick = 0
while True:
    now = time.monotonic() - start
    if now >= total:
        break
    if b is None and now >= transfer_at:
        t = ctl("transfer", "--session", session, "--gruu", gruu_b,
                "--user-peer", "%s:%d" % device_b.getsockname())
        b = Talker("B", device_b, addr(t["streams"][0]["user"]["rtp"]), ord("B"))
        print(f"{now:5.2f}s transfer to device B opened: B -> {b.to[0]}:{b.to[1]} (switch on B's first packet)")
    if now < a_stops:
        a.send()
    if b is not None and now >= b_starts:
        if not getattr(b, "announced", False):
            print(f"{now:5.2f}s device B starts talking (A goes on for 100 ms, then hangs up)")
            b.announced = True
        b.send()
    far.send()
    tick += 1
    time.sleep(max(0.0, start + tick * 0.02 - time.monotonic()))
time.sleep(0.3)
stop.set()
for t in threads:
    t.join()
if capture:
    time.sleep(0.5)
    capture.terminate()
    capture.wait()

info = ctl("get", "--session", session)["session"]
ctl("delete", "--session", session)

# What the remote heard.
ssrcs = sorted({r[3] for r in received})
errors = 0
switch = None
for prev, cur in zip(received, received[1:]):
    if cur[1] != (prev[1] + 1) & 0xFFFF:
        errors += 1
    if cur[5] != prev[5]:
        switch = (prev, cur)
markers = sum(1 for r in received if r[4])
print()
print(f"the remote received {len(received)} packets: from A {sum(1 for r in received if r[5] == ord('A'))}, "
      f"from B {sum(1 for r in received if r[5] == ord('B'))}")
print(f"  SSRCs seen: {len(ssrcs)} ({', '.join('%08x' % s for s in ssrcs)}); device A's was {a.ssrc:08x}, B's {b.ssrc if b else 0:08x}")
print(f"  sequence errors (gap or repeat): {errors}; marker bits: {markers}")
if switch:
    prev, cur = switch
    step = (cur[2] - prev[2]) & 0xFFFFFFFF
    print(f"  at the switch: seq {prev[1]} -> {cur[1]}, timestamp +{step} ({step / 8:.1f} ms at 8 kHz), "
          f"{(cur[0] - prev[0]) * 1000:.1f} ms apart on arrival, marker {'set' if cur[4] else 'NOT set'}")
print(f"the devices heard the remote: A {heard['A']} packets, B {heard['B']} packets")

def plot(path, switch, window=0.2):
    """The remote's packets within `window` s of the switch: sequence number
    and timestamp (ms of media) against arrival, A blue and B orange."""
    zero = switch[1][0]
    shown = [r for r in received if abs(r[0] - zero) <= window]
    first = shown[0]
    colour = {ord("A"): "#1f77b4", ord("B"): "#ff7f0e"}
    panels = [("sequence number", lambda r: ((r[1] - first[1] + 0x8000) & 0xFFFF) - 0x8000),
              ("timestamp (ms of media)", lambda r: ((((r[2] - first[2]) + 2**31) % 2**32) - 2**31) / 8.0)]
    w, h, m = 420, 220, 56
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * (w + m) + m}" height="{h + 2 * m + 40}" '
           'font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>',
           f'<text x="{(2 * (w + m) + m) / 2}" y="22" font-size="14" text-anchor="middle">'
           'What the remote received around the switch from device A to device B</text>']
    for i, (label, value) in enumerate(panels):
        left, top = m + i * (w + m), 40 + m / 2
        values = [value(r) for r in shown]
        lo, hi = min(values), max(max(values), min(values) + 1)
        x = lambda t: left + (t - zero + window) / (2 * window) * w
        y = lambda v: top + h - (v - lo) / (hi - lo) * h
        out.append(f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#888"/>'
                   f'<line x1="{x(zero)}" y1="{top}" x2="{x(zero)}" y2="{top + h}" stroke="#444" stroke-dasharray="4 3"/>'
                   f'<text x="{left}" y="{top + h + 16}">-{window * 1000:.0f} ms</text>'
                   f'<text x="{x(zero)}" y="{top + h + 16}" text-anchor="middle">0 (switch)</text>'
                   f'<text x="{left + w}" y="{top + h + 16}" text-anchor="end">+{window * 1000:.0f} ms</text>'
                   f'<text x="{left - 34}" y="{top + h / 2}" text-anchor="middle" transform="rotate(-90 {left - 34} {top + h / 2})">{label}</text>'
                   f'<text x="{left - 4}" y="{top + h}" text-anchor="end">{lo:.0f}</text>'
                   f'<text x="{left - 4}" y="{top + 10}" text-anchor="end">{hi:.0f}</text>')
        for r, v in zip(shown, values):
            out.append(f'<circle cx="{x(r[0]):.1f}" cy="{y(v):.1f}" r="2" fill="{colour.get(r[5], "#888")}"/>')
        for n, (name, tag) in enumerate((("device A", ord("A")), ("device B", ord("B")))):
            out.append(f'<circle cx="{left + 10}" cy="{top + 10 + n * 14}" r="4" fill="{colour[tag]}"/>'
                       f'<text x="{left + 18}" y="{top + 14 + n * 14}">{name}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    print(f"plot of the switch written to {path}")

if os.environ.get("PLOT") and switch:
    plot(os.environ["PLOT"], switch)
print(f"session now on {info['gruu']}")
ok = len(ssrcs) == 1 and errors == 0 and switch is not None and switch[1][4]
print()
print("RESULT: " + ("one continuous stream (1 SSRC, 0 sequence errors, marker at the switch)" if ok
                    else "NOT continuous"))
if capture:
    print()
    print("tshark's RTP stream analysis of the remote's port:")
    subprocess.run(["tshark", "-q", "-r", pcap, "-d", f"udp.port=={remote.getsockname()[1]},rtp", "-z", "rtp,streams"])
elif not use_tshark:
    print("(install tshark to see its RTP stream analysis as well: apt-get install tshark)")
raise SystemExit(0 if ok else 1)
PY
