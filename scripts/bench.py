"""The benchmark orchestrator behind scripts/bench.sh (see there)."""
import base64, json, os, platform, random, re, socket, statistics, subprocess, sys, tempfile, time

BATON = os.environ["BATON"]
FORWARDER = os.environ["FORWARDER"]
# Optional anchors: another baton build (say the previous commit's) and the
# user-space floor (../shared/tools/limitfwd), for side-by-side sittings.
# Anchor names: baton-1w (one worker, defaults), baton-2w, baton-1w-busy,
# baton-kernel (--kernel-forwarding), baton-session (lanes off), baton-prev
# (BATON_PREV), baton-alt (BATON_ALT: a third build, say an experiment
# beside the commit it changes), limitfwd and limitfwd-again (the floor run
# a second time in each repetition, to show how far apart two runs of one
# forwarder come).
# limitfwd-pair is LIMITFWD_PAIR: the floor changed to send each packet out
# through the other leg's socket, as a relay must (symmetric RTP: the remote
# sends to the port it hears from), where limitfwd sends it back out through
# the socket it came in on. Built outside the project from the floor's own
# source, see BENCHMARKS.md ("The floor's one socket").
BATON_PREV = os.environ.get("BATON_PREV")
BATON_ALT = os.environ.get("BATON_ALT")
LIMITFWD_PAIR = os.environ.get("LIMITFWD_PAIR")
FLOORS = ("limitfwd", "limitfwd-again", "limitfwd-pair")
# Anchors that are a forwarder started from a port map, not a relay that
# takes calls over a control protocol.
PLAN_DRIVEN = ("forwarder", *FLOORS)
LIMITFWD = os.environ.get("LIMITFWD")
# Anchors run from a binary of their own: its variable and path.
ANCHOR_BINARIES = {"limitfwd": ("LIMITFWD", LIMITFWD), "limitfwd-again": ("LIMITFWD", LIMITFWD),
                   "limitfwd-pair": ("LIMITFWD_PAIR", LIMITFWD_PAIR), "baton-prev": ("BATON_PREV", BATON_PREV),
                   "baton-alt": ("BATON_ALT", BATON_ALT)}
REPS = int(os.environ.get("REPS", "3"))
STEPS = int(os.environ.get("STEPS", "6"))
TRIAL = float(os.environ.get("TRIAL", "3"))
STREAMS = [int(s) for s in os.environ.get("STREAMS", "100 1000 5000").split()]
ANCHORS = os.environ.get("ANCHORS", "direct forwarder rtpengine baton-1w baton-2w").split()
# Parts of the run: max (rates), latency, overload, scale, memory, handoffs,
# srtp (SRTP <-> RTP bridging at 1000 streams, baton against rtpengine), micro.
SECTIONS = set(os.environ.get("SECTIONS", "max latency overload scale memory handoffs srtp micro").split())
RELAY_CORE, GEN_CORE = "0", "1"
# Generator sockets per side, shared by the calls (`baton load
# --share-sockets`): a generator with one socket per call side spends a
# syscall per packet and its own ceiling, not the relay's, would bound the
# figures at 5000 streams. The relays' work is the same either way: one
# port per call side, one packet per wake-up per port.
SHARE = int(os.environ.get("SHARE", "16"))
# Seconds at 50 pps per flow before each measured run, not counted (`baton
# load --warmup`): the kernel fast path takes legs once they are steady, so
# a run measures established legs. 0: none (the older sittings).
WARMUP = float(os.environ.get("WARMUP", "0"))
WORK = tempfile.mkdtemp(prefix="baton-bench-")
HAVE_RTPENGINE = subprocess.run(["sh", "-c", "command -v rtpengine"], capture_output=True).returncode == 0


def log(*args):
    print("bench:", *args, file=sys.stderr, flush=True)


# RELAY_FIFO=1 runs the relays (not the generator) under SCHED_FIFO, so
# that no other task on their core delays them by a time slice: the tail
# then shows the relays, not the machine's other work.
RELAY_FIFO = os.environ.get("RELAY_FIFO") == "1"


def pinned(core, argv):
    return ["taskset", "-c", core, *argv]


def relay_pinned(core, argv):
    prio = ["chrt", "-f", "50"] if RELAY_FIFO else []
    return pinned(core, [*prio, *argv])


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def wait_port(sock_path=None, udp=None, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        if sock_path and os.path.exists(sock_path):
            return
        if udp and ng(udp, {"command": "ping"}, timeout=0.2):
            return
        time.sleep(0.05)
    raise SystemExit(f"bench: relay did not come up ({sock_path or udp})")


# --- bencode and the ng protocol (rtpengine) ------------------------------
def benc(v):
    if isinstance(v, dict):
        return b"d" + b"".join(benc(k) + benc(x) for k, x in v.items()) + b"e"
    if isinstance(v, list):
        return b"l" + b"".join(benc(x) for x in v) + b"e"
    if isinstance(v, int):
        return b"i%de" % v
    v = v.encode() if isinstance(v, str) else v
    return b"%d:%s" % (len(v), v)


def bdec(b, i=0):
    c = b[i:i + 1]
    if c == b"d":
        i, out = i + 1, {}
        while b[i:i + 1] != b"e":
            k, i = bdec(b, i)
            out[k], i = bdec(b, i)
        return out, i + 1
    if c == b"l":
        i, out = i + 1, []
        while b[i:i + 1] != b"e":
            x, i = bdec(b, i)
            out.append(x)
        return out, i + 1
    if c == b"i":
        end = b.index(b"e", i)
        return int(b[i + 1:end]), end + 1
    colon = b.index(b":", i)
    n = int(b[i:colon])
    return b[colon + 1:colon + 1 + n].decode(errors="replace"), colon + 1 + n


_ng_sock = None
_cookie = 0


def ng(addr, message, timeout=2.0):
    global _ng_sock, _cookie
    if _ng_sock is None:
        _ng_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    _cookie += 1
    cookie = f"b{_cookie}".encode()
    _ng_sock.settimeout(timeout)
    _ng_sock.sendto(cookie + b" " + benc(message), addr)
    try:
        while True:
            data, _ = _ng_sock.recvfrom(65536)
            if data.startswith(cookie + b" "):
                return bdec(data[len(cookie) + 1:])[0]
    except socket.timeout:
        return None


def sdp(port, crypto=None):
    """A PCMU offer or answer; with `crypto` (an a=crypto value) RTP/SAVP."""
    proto, extra = ("RTP/SAVP", f"a=crypto:{crypto}\r\n") if crypto else ("RTP/AVP", "")
    return (f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {port} {proto} 0\r\na=rtpmap:0 PCMU/8000\r\n{extra}a=sendrecv\r\n")


# SRTP anchors bridge an SRTP device to a plain remote with this suite.
SRTP_SUITE = "AES_CM_128_HMAC_SHA1_80"


def crypto_key(text):
    """The base64 key of the first a=crypto line of SRTP_SUITE in a body."""
    m = re.search(r"a=crypto:\d+ " + SRTP_SUITE + r" inline:([A-Za-z0-9+/=]+)", text)
    if not m:
        raise SystemExit(f"bench: no {SRTP_SUITE} key in {text!r}")
    return m.group(1)


def sdp_port(text):
    return int(re.search(r"m=audio (\d+)", text).group(1))


# --- relays ----------------------------------------------------------------
class NotUp(SystemExit):
    """A relay under test that did not open its control port in time (the
    kernel sitting goes on without that run; elsewhere it ends the run, as
    before)."""


class Relay:
    """A relay under test (or none), able to lay out fresh calls."""

    def __init__(self, anchor):
        self.anchor, self.proc, self.sock = anchor, None, None
        if anchor.startswith("baton"):
            binary = ANCHOR_BINARIES.get(anchor, (None, BATON))[1]
            workers = "2" if anchor == "baton-2w" else "1"
            cores = RELAY_CORE if workers == "1" else f"{RELAY_CORE},{GEN_CORE}"
            self.sock = os.path.join(WORK, f"{anchor}.sock")
            extra = ["--busy-poll"] if anchor == "baton-1w-busy" else []
            if anchor == "baton-kernel":
                extra = ["--kernel-forwarding"]
            if anchor == "baton-session":
                # Every packet through its session: lanes off.
                extra = ["--user-fast-path", "false"]
            if anchor == "baton-scale":
                # 10 000 calls need 20 000 port pairs: a range of its own on
                # 127.0.0.2, clear of the generator's ephemeral ports.
                extra = ["--media-ip", "127.0.0.2", "--ports", "10000-59999"]
            else:
                extra += ["--ports", "30000-49999"]
            self.proc = subprocess.Popen(relay_pinned(cores, [binary, "run", "--control", f"unix:{self.sock}",
                                                        "--workers", workers, "--max-sessions", "100000",
                                                        "--media-timeout", "120", *extra]),
                                         stderr=subprocess.DEVNULL)
            self.wait_up(sock_path=self.sock)
        elif anchor.startswith("rtpengine"):
            self.ng_addr = ("127.0.0.1", 2223)
            self.proc = subprocess.Popen(pinned(RELAY_CORE, [
                "rtpengine", "--config-file=none", "--foreground", "--table=-1",
                "--interface=lo/127.0.0.1", "--listen-ng=127.0.0.1:2223", "--port-min=30000",
                # Ports of deleted calls come back at once (the default
                # holds them 30 s), so every trial can have fresh calls.
                "--port-max=65000", "--delete-delay=0", "--num-threads=1", "--log-level=3", "--log-stderr"]),
                stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            self.wait_up(udp=self.ng_addr)
        self.calls = []
        self.serial = 0

    def load_args(self, streams):
        """Arguments of `baton load` for `streams` one-way streams, setting
        up fresh calls where the relay needs them."""
        calls = max(1, streams // 2)
        share = ["--share-sockets", str(SHARE)] if SHARE else []
        # Which shared generator address call k uses (as baton load and the
        # forwarder lay them out: in blocks).
        peer = (lambda k: k * min(SHARE, calls) // calls) if SHARE else (lambda k: k)
        if self.anchor == "direct":
            return ["--direct", "--calls", str(calls), *share]
        if self.anchor.startswith("baton"):
            srtp = ["--srtp", "device", "--srtp-suite", SRTP_SUITE] if self.anchor == "baton-srtp" else []
            return ["--control", f"unix:{self.sock}", "--calls", str(calls), *share, *srtp]
        plan = os.path.join(WORK, "plan.txt")
        lines = []
        if self.anchor in PLAN_DRIVEN:
            base = 51000
            for k in range(calls):
                dev, rem = f"127.0.0.1:{10000 + peer(k)}", f"127.0.0.1:{15000 + peer(k)}"
                lines += [f"{dev} 127.0.0.1:{base + 2 * k} {rem}", f"{rem} 127.0.0.1:{base + 2 * k + 1} {dev}"]
        else:
            self.delete_calls()
            for k in range(calls):
                self.serial += 1
                # Generator ports stay below every relay's range (30000+).
                call_id, dev_port, rem_port = f"bench-{self.serial}", 10000 + 2 * peer(k), 20000 + 2 * peer(k)
                # rtpengine-srtp: the device offers SDES, the remote is
                # plain RTP (SRTP <-> RTP bridging, userspace).
                srtp = self.anchor == "rtpengine-srtp"
                dev_key = base64.b64encode(os.urandom(30)).decode() if srtp else None
                offer_flags = {"transport-protocol": "RTP/AVP", "DTLS": "off", "ICE": "remove"} if srtp else {}
                offer = ng(self.ng_addr, {"command": "offer", "call-id": call_id, "from-tag": "dev",
                                          "sdp": sdp(dev_port, f"1 {SRTP_SUITE} inline:{dev_key}" if srtp else None),
                                          **offer_flags})
                answer = ng(self.ng_addr, {"command": "answer", "call-id": call_id, "from-tag": "dev",
                                           "to-tag": "rem", "sdp": sdp(rem_port)})
                if not offer or not answer or offer.get("result") != "ok" or answer.get("result") != "ok":
                    raise SystemExit(f"bench: rtpengine refused call {k}: {offer} {answer}")
                self.calls.append(call_id)
                to_remote_side, to_device_side = sdp_port(offer["sdp"]), sdp_port(answer["sdp"])
                dev, rem = f"127.0.0.1:{dev_port}", f"127.0.0.1:{rem_port}"
                keys = f" srtp-out={SRTP_SUITE}:{dev_key} srtp-in={SRTP_SUITE}:{crypto_key(answer['sdp'])}" if srtp else ""
                lines += [f"{dev} 127.0.0.1:{to_device_side} {rem}{keys}", f"{rem} 127.0.0.1:{to_remote_side} {dev}"]
        with open(plan, "w") as f:
            f.write("\n".join(lines) + "\n")
        return ["--plan", plan]

    def delete_calls(self):
        for call_id in self.calls:
            ng(self.ng_addr, {"command": "delete", "call-id": call_id, "from-tag": "dev"})
        self.calls = []

    def start_forwarder(self, streams, seconds):
        calls = max(1, streams // 2)
        if self.anchor in FLOORS:
            # The same legs as the forwarder's plan: relay port → peer.
            peer = (lambda k: k * min(SHARE, calls) // calls) if SHARE else (lambda k: k)
            legs = os.path.join(WORK, "limitfwd.map")
            with open(legs, "w") as f:
                for k in range(calls):
                    dev, rem = f"127.0.0.1:{10000 + peer(k)}", f"127.0.0.1:{15000 + peer(k)}"
                    f.write(f"127.0.0.1:{51000 + 2 * k} {rem}\n127.0.0.1:{51000 + 2 * k + 1} {dev}\n")
            binary = ANCHOR_BINARIES[self.anchor][1]
            return subprocess.Popen(relay_pinned(RELAY_CORE, [binary, "--map", legs, "--max-seconds", str(int(seconds + 3))]),
                                    stderr=subprocess.DEVNULL)
        return subprocess.Popen(pinned(RELAY_CORE, [FORWARDER, str(calls), "51000", str(int(seconds + 3)),
                                                    "10000", "15000", str(min(SHARE, calls))]),
                                stderr=subprocess.DEVNULL)

    def wait_up(self, **where):
        """Waits for the relay's control port; one that does not come up is
        killed (it would hold the relay core's time and its ports through
        the rest of the sitting) and reported as NotUp."""
        try:
            wait_port(**where)
        except SystemExit as e:
            self.proc.kill()
            self.proc.wait()
            raise NotUp(str(e)) from None

    def stop(self):
        if self.anchor.startswith("rtpengine"):
            self.delete_calls()
        if self.proc:
            self.proc.terminate()
            self.proc.wait()


def start_run(relay, streams, seconds):
    """What a run needs before the generator starts: the forwarder of a
    plan-driven anchor (running `seconds`), `baton load`'s arguments (fresh
    calls where the relay needs them) and the pid whose CPU is the relay's."""
    forwarder = (relay.start_forwarder(streams, seconds)
                 if relay.anchor in PLAN_DRIVEN else None)
    if forwarder:
        time.sleep(0.3)
    args = relay.load_args(streams)
    pid = relay.proc.pid if relay.proc else (forwarder.pid if forwarder else None)
    return forwarder, args, pid


def loss_pct(result):
    """Packets not received in time, of those due. Packets the generator
    could not send in time were not offered: they count against the trial
    like lost ones, or a rate beyond the generator's reach would pass."""
    sent = result["sent"] + result.get("skipped", 0)
    return 100.0 * (sent - (result["received"] - result["late"])) / sent if sent else 100.0


def trial(relay, streams, pps, seconds=TRIAL, extra=()):
    """One run of the generator at `pps` packets/s in total."""
    ptime_ms = streams * 1000.0 / pps
    forwarder, args, pid = start_run(relay, streams, seconds + WARMUP)
    cpu0 = cpu_seconds(pid) if pid else 0.0
    warmup = ["--warmup", str(WARMUP)] if WARMUP > 0 else []
    out = subprocess.run(pinned(GEN_CORE, [BATON, "load", *args, "--duration", str(seconds),
                                           "--ptime-ms", f"{ptime_ms:.4f}", "--json", *warmup, *extra]),
                         capture_output=True, text=True)
    cpu = (cpu_seconds(pid) - cpu0) if pid else 0.0
    if forwarder:
        forwarder.wait()
    try:
        result = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        log(f"{relay.anchor} {streams} streams {pps} pps: no result: {out.stderr[-300:]}")
        return None
    result["bench_loss_pct"] = loss_pct(result)
    result["relay_cpu_s"] = cpu
    return result


def max_rate(relay, streams, ceiling):
    """Bisection for the highest rate with < 0.1 % loss."""
    lo, hi, best = 0.0, ceiling, None
    rate = ceiling / 2
    for _ in range(STEPS):
        r = trial(relay, streams, rate)
        ok = r is not None and r["bench_loss_pct"] < 0.1
        log(f"  {relay.anchor:10} {streams:5} streams {rate:9.0f} pps -> "
            f"{'ok ' if ok else 'LOSS'} {r['bench_loss_pct'] if r else float('nan'):.3f} %")
        if ok:
            lo, best = rate, r
        else:
            hi = rate
        rate = (lo + hi) / 2
    return lo, best


def compare():
    """A side-by-side sitting of ANCHORS (say limitfwd, baton-prev and
    baton-1w) at each of STREAMS: the highest rate with < 0.1 % loss and the
    relay's CPU per packet there, then latency and CPU per packet at 50
    packets/s per stream; medians of REPS, anchors interleaved within each
    repetition so drift hits them alike. Writes COMPARE_OUT (markdown)."""
    rows = {}
    for streams in STREAMS:
        for rep in range(REPS):
            for anchor in ANCHORS:
                relay = Relay(anchor)
                try:
                    rate, best = max_rate(relay, streams, 700_000.0)
                finally:
                    relay.stop()
                row = rows.setdefault((anchor, streams), {"max": [], "cpu_max": [], "p50": [], "p99": [], "cpu": []})
                row["max"].append(rate)
                if best and best["received"] and best["relay_cpu_s"]:
                    row["cpu_max"].append(1e6 * best["relay_cpu_s"] / best["received"])
                relay = Relay(anchor)
                try:
                    r = trial(relay, streams, 50 * streams, seconds=5)
                finally:
                    relay.stop()
                if r:
                    row["p50"].append(r["latency_us"]["p50"])
                    row["p99"].append(r["latency_us"]["p99"])
                    row["cpu"].append(1e6 * r["relay_cpu_s"] / max(1, r["received"]))
                log(f"{anchor} {streams} streams rep {rep}: max {rate:.0f} pps, "
                    f"{row['cpu'][-1] if row['cpu'] else float('nan'):.2f} us/packet at 50 pps")
    med = lambda xs: statistics.median(xs) if xs else float("nan")
    lines = [f"Machine: {platform.node()} ({os.cpu_count()} cores, {platform.release()}), "
             f"{time.strftime('%Y-%m-%d')}; relay on core {RELAY_CORE}, generator on core {GEN_CORE}; "
             f"medians of {REPS} repetitions, anchors interleaved.", "",
             "| anchor | streams | highest rate < 0.1 % loss | CPU per packet there | p50 / p99 at 50 pps | CPU per packet at 50 pps |",
             "|---|---|---|---|---|---|"]
    for (anchor, streams), row in rows.items():
        lines.append(f"| {anchor} | {streams} | {med(row['max']):.0f} (runs {', '.join(f'{x:.0f}' for x in row['max'])}) "
                     f"| {med(row['cpu_max']):.2f} µs | {med(row['p50']):.1f} / {med(row['p99']):.1f} µs "
                     f"| {med(row['cpu']):.2f} µs (runs {', '.join(f'{x:.2f}' for x in row['cpu'])}) |")
    path = os.environ.get("COMPARE_OUT", "compare.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    log(f"wrote {path}")


def machine_busy(cpu=""):
    """CPU seconds all cores (or core `cpu`) spent busy: user, nice,
    system, irq, softirq (the kernel path's work is softirq time, in
    whatever task it lands)."""
    with open("/proc/stat") as f:
        for line in f:
            fields = line.split()
            if fields[0] == f"cpu{cpu}":
                v = [int(x) for x in fields[1:8]]
                return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def machine_steal(cpu=""):
    """Seconds the hypervisor kept this machine's cores (or core `cpu`)
    from running (steal time)."""
    with open("/proc/stat") as f:
        for line in f:
            fields = line.split()
            if fields[0] == f"cpu{cpu}" and len(fields) > 8:
                return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def wakeups(pid):
    """Times the process's threads went to sleep and were woken since they
    started (voluntary context switches): on a VM whose idle cores halt to
    the host, each is a halt the hypervisor may answer late."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status") as f:
                total += int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", f.read(), re.M).group(1))
        except (OSError, AttributeError):
            pass
    return total


# ORDER=shuffle: the anchors of each repetition of a kernel sitting run in
# a random order (seeded, so a sitting can be repeated) instead of the
# rotation.
ORDER = os.environ.get("ORDER", "rotate")

# STALL="S/T" (ms) stops the relay under test for S ms every T ms during
# each steady run (SIGSTOP, SIGCONT): a stall of known length at known
# times, the same for every anchor, so that how each drains the packets
# queued behind it can be compared apart from the host's own stalls.
STALL = os.environ.get("STALL")


def stall_relay(pid, done, lengths):
    """Stops and continues `pid` as STALL says until `done` is set, adding
    each stop's real length in ms (signal to signal) to `lengths`."""
    import signal
    stop_ms, every_ms = (float(x) for x in STALL.split("/"))
    # On the generator's core at a real-time priority, so that the stop
    # ends on time: at normal priority beside the generator, a nominal 5 ms
    # stop lasted 10 ms (median) and up to 48 ms.
    try:
        os.sched_setaffinity(0, {int(GEN_CORE)})
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(60))
    except (OSError, AttributeError):
        pass
    while not done.wait((every_ms - stop_ms) / 1000.0):
        stopped = time.monotonic()
        try:
            os.kill(pid, signal.SIGSTOP)
            time.sleep(stop_ms / 1000.0)
        except ProcessLookupError:
            return
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        lengths.append(1000.0 * (time.monotonic() - stopped))


# SPANS=1 records, during each steady run, each span of the relay on its
# core: from one of its threads getting the core to giving it up (bpftrace
# on sched_switch; needs root and Debian's bpftrace). A packet that arrives
# while the relay runs waits behind the rest of that span, so work of the
# relay's own that comes in long stretches (a scan over all sessions, say)
# would show as long spans. A span's CPU time is the scheduler's account of
# the thread (sum_exec_runtime): it leaves out the steal the guest is told
# of inside the span, but it includes the wake-up path before the span
# (a few µs, charged to the thread that woke) and any stall the guest is
# not told of. Nor does it leave out steal's effect on how much work waits
# when a span starts: after a stall a span drains the backlog, so the
# distribution moves with steal like latency does. Its wall length is kept
# beside it. The probe runs on every context switch of both cores, so a
# sitting with SPANS=1 costs every anchor a little more CPU.
SPANS = os.environ.get("SPANS") == "1"
SPANS_PROGRAM = """
BEGIN { @t0 = nsecs; printf("ready\\n"); }
tracepoint:sched:sched_switch /cpu == %s/ {
  $t = (struct task_struct *)curtask;
  if ($t->tgid == $1) {
    $run = $t->se.sum_exec_runtime;
    if (@out[args->prev_pid] != 0 && nsecs > @t0 + $2 && nsecs < @t0 + $3) {
      @cpu[($run - @out[args->prev_pid]) / 1000] = count();
      @wall[(nsecs - @last) / 1000] = count();
    }
    @out[args->prev_pid] = $run;
  }
  @last = nsecs;
  if (nsecs > @t0 + $3) { exit(); }
}
END { clear(@out); clear(@last); clear(@t0); }
""" % RELAY_CORE


def check_spans():
    """SPANS=1 needs bpftrace and root: said at once, not mid-sitting."""
    if not SPANS:
        return
    if subprocess.run(["sh", "-c", "command -v bpftrace"], capture_output=True).returncode != 0:
        sys.exit("SPANS=1 needs bpftrace (apt-get install bpftrace)")
    if os.geteuid() != 0:
        sys.exit("SPANS=1 needs root (bpftrace)")


def start_spans(pid, begin, end):
    """Starts recording `pid`'s spans on the relay core from `begin` to
    `end` seconds after the probe is attached, and returns once it is
    (None, logged, if it failed). bpftrace runs on the generator's core and
    compiles before the run starts."""
    path = os.path.join(WORK, "spans.bt")
    with open(path, "w") as f:
        f.write(SPANS_PROGRAM)
    errors = open(os.path.join(WORK, "spans.err"), "w")
    probe = subprocess.Popen(pinned(GEN_CORE, ["bpftrace", path, str(pid), str(int(begin * 1e9)), str(int(end * 1e9))]),
                             stdout=subprocess.PIPE, stderr=errors, text=True)
    errors.close()
    # BEGIN's line comes once every probe is attached.
    while True:
        line = probe.stdout.readline()
        if not line:
            probe.wait()
            with open(os.path.join(WORK, "spans.err")) as f:
                log(f"SPANS: bpftrace did not start: {f.read().strip()[-300:]}")
            return None
        if line.strip() == "ready":
            return probe


def read_spans(probe, timeout):
    """The spans `probe` recorded: {"cpu": {µs: count}, "wall": {µs: count}},
    or None if it recorded none."""
    try:
        out, _ = probe.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        probe.send_signal(2)
        try:
            out, _ = probe.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            probe.kill()
            out, _ = probe.communicate()
    spans = {"cpu": {}, "wall": {}}
    for kind, us, n in re.findall(r"^@(cpu|wall)\[(\d+)\]: (\d+)$", out, re.M):
        spans[kind][int(us)] = int(n)
    return spans if spans["cpu"] else None


def span_quantile(histograms, q):
    """Quantile `q` (µs) of the spans of histograms {µs: count} taken as one."""
    counts = {}
    for h in histograms:
        for us, n in h.items():
            counts[int(us)] = counts.get(int(us), 0) + n
    total = sum(counts.values())
    if not total:
        return float("nan")
    seen = 0
    for us in sorted(counts):
        seen += counts[us]
        if seen >= q * total:
            return float(us)
    return float(max(counts))


def steady(relay, streams, pps, seconds):
    """A run with a warmup (WARMUP, at least 3 s); the machine's busy CPU
    and the relay process's CPU over the middle of the measured part, read
    while `baton load` runs (its progress lines tell where it is)."""
    warmup = max(WARMUP, 3.0)
    forwarder, args, pid = start_run(relay, streams, seconds + warmup + 3)
    ptime_ms = streams * 1000.0 / pps
    probe = None
    if SPANS and pid:
        # From well after the calls are set up and the warmup has begun,
        # to before the last second of the run.
        probe = start_spans(pid, warmup + 2.0, warmup + seconds - 0.5)
    load = subprocess.Popen(pinned(GEN_CORE, [BATON, "load", *args, "--warmup", str(warmup),
                                              "--duration", str(seconds), "--ptime-ms", f"{ptime_ms:.4f}", "--json"]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first, last = warmup + 1.0, warmup + seconds - 1.0
    marks = {}
    stalls_done, stall_lengths = None, []
    if STALL and pid:
        import threading
        stalls_done = threading.Event()
        threading.Thread(target=stall_relay, args=(pid, stalls_done, stall_lengths), daemon=True).start()
    for line in load.stderr:
        m = re.match(r"baton load:\s+([\d.]+) s", line)
        if not m:
            continue
        at = float(m.group(1))
        for name, when in (("from", first), ("to", last)):
            if name not in marks and at >= when:
                marks[name] = (at, machine_busy(), cpu_seconds(pid) if pid else 0.0, machine_busy(RELAY_CORE),
                               wakeups(pid) if pid else 0, machine_steal(), machine_steal(RELAY_CORE), time.time())
    out = load.stdout.read()
    load.wait()
    spans = read_spans(probe, timeout=5) if probe else None
    if stalls_done:
        stalls_done.set()
    if forwarder:
        forwarder.wait()
    try:
        result = json.loads(out.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return None
    if "from" not in marks or "to" not in marks:
        return None
    (t0, busy0, own0, core0, woke0, steal0, core_steal0, wall0) = marks["from"]
    (t1, busy1, own1, core1, woke1, steal1, core_steal1, wall1) = marks["to"]
    # Steal over the same window as the CPU readings (the middle of the
    # measured part), not the whole run with its warmup.
    elapsed = max(wall1 - wall0, 1e-3)
    result["steal_ms_per_s"] = 1000.0 * (steal1 - steal0) / elapsed
    if stall_lengths:
        result["stall_ms"] = {"stops": len(stall_lengths), "median": statistics.median(stall_lengths),
                              "max": max(stall_lengths)}
    result["relay_core_steal_ms_per_s"] = 1000.0 * (core_steal1 - core_steal0) / elapsed
    result["relay_wakeups_per_s"] = (woke1 - woke0) / (t1 - t0)
    if spans:
        result["spans_us"] = spans
    packets = pps * (t1 - t0)
    result["bench_loss_pct"] = loss_pct(result)
    result["machine_us_per_packet"] = 1e6 * (busy1 - busy0) / packets
    result["relay_us_per_packet"] = 1e6 * (own1 - own0) / packets
    result["relay_core_us_per_packet"] = 1e6 * (core1 - core0) / packets
    return result


def spearman(xs, ys):
    """Spearman's rank correlation (ties ranked by their mean rank)."""
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r
    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.mean(rx), statistics.mean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return cov / var if var else float("nan")


def pooled_quantile(cdfs, q):
    """The latency below which a fraction q of all the packets of several
    equally long runs fell, from each run's CDF points (latency, fraction):
    where the mean of the runs' CDFs (linear between points) reaches q."""
    cdfs = [c for c in cdfs if c]
    if not cdfs:
        return float("nan")

    def below(cdf, x):
        prev_x, prev_f = 0.0, 0.0
        for lat, f in cdf:
            if x < lat:
                return prev_f + (f - prev_f) * (x - prev_x) / (lat - prev_x) if lat > prev_x else prev_f
            prev_x, prev_f = lat, f
        return prev_f  # past the last point (the 99.99th): not asked for

    lo, hi = 0.0, max(lat for c in cdfs for lat, _ in c) * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        if sum(below(c, mid) for c in cdfs) / len(cdfs) < q:
            lo = mid
        else:
            hi = mid
    return hi


def middle_90(values):
    """The 5th and 95th percentiles of `values` (NaN ones left out): a 90 %
    bootstrap interval from its draws."""
    v = sorted(x for x in values if x == x)
    return (v[int(0.05 * len(v))], v[int(0.95 * len(v)) - 1]) if v else (float("nan"), float("nan"))


def bootstrap_ratio(ours, floor, q, draws=400, seed=21):
    """A 90 % interval for pooled_quantile(ours, q) / pooled_quantile(floor,
    q), where ours and floor map a repetition to that repetition's CDF: the
    5th and 95th percentiles over `draws` resamplings of the repetitions
    (with replacement, both anchors' runs of a repetition drawn together,
    since they ran minutes apart on the same machine). On a machine whose
    stalls move one run's tail several-fold, this says how far a sitting's
    ratio could be from the one it would settle at with more repetitions."""
    import random
    reps = sorted(r for r in ours if ours[r] and floor.get(r))
    if len(reps) < 3:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    ratios = []
    for _ in range(draws):
        pick = [rng.choice(reps) for _ in reps]
        ratios.append(pooled_quantile([ours[r] for r in pick], q) / pooled_quantile([floor[r] for r in pick], q))
    return middle_90(ratios)


def least_squares(xs, ys):
    """Coefficients b minimising |X b - y| (the normal equations, solved by
    Gauss-Jordan elimination with partial pivoting; a handful of columns)."""
    n = len(xs[0])
    m = [[sum(x[i] * x[j] for x in xs) for j in range(n)] + [sum(x[i] * y for x, y in zip(xs, ys))]
         for i in range(n)]
    scale = max(abs(v) for row in m for v in row[:n]) or 1.0
    for c in range(n):
        pivot = max(range(c, n), key=lambda r: abs(m[r][c]))
        m[c], m[pivot] = m[pivot], m[c]
        if abs(m[c][c]) < 1e-9 * scale:
            # A column the others make up (or all zero): no coefficient.
            m[c][c] = 0.0
            continue
        for r in range(n):
            if r != c:
                f = m[r][c] / m[c][c]
                m[r] = [a - f * b for a, b in zip(m[r], m[c])]
    return [m[i][n] / m[i][i] if m[i][i] else float("nan") for i in range(n)]


def steal_adjusted(runs, draws=1000, seed=21, again_apart=False):
    """Each anchor's tail against limitfwd's at equal steal. `runs` holds
    (anchor, steal ms/s, latency, sitting) per run with at most 0.1 % loss,
    limitfwd-again counted as limitfwd. Fits log(latency) = anchor's term +
    sitting's term + slope x log(1 + steal) by least squares (the sitting's
    term takes up how fast the machine was that day): on a machine whose
    stalls move a run's p99 several-fold, comparing runs that drew the same
    steal is fairer than comparing whichever runs happened to sit side by
    side. Returns {anchor: (factor,
    low, high)} (factor = exp(term), 90 % bootstrap interval over runs) and
    the slope with its interval. With `again_apart`, limitfwd-again is
    an anchor of its own: the floor against itself, which shows how far
    apart the method puts two runs of one forwarder."""
    import math
    runs = [("limitfwd" if a == "limitfwd-again" and not again_apart else a, st, v, g) for a, st, v, g in runs
            if st == st and v == v and v > 0]
    others = sorted({a for a, _, _, _ in runs} - {"limitfwd"})
    sittings = sorted({g for _, _, _, g in runs})[1:]
    if not others or len(runs) < len(others) + len(sittings) + 4 or not any(a == "limitfwd" for a, *_ in runs):
        return {}, None

    def fit(sample):
        xs = [[1.0] + [1.0 if a == o else 0.0 for o in others] + [1.0 if g == o else 0.0 for o in sittings]
              + [math.log1p(st)] for a, st, _, g in sample]
        return least_squares(xs, [math.log(v) for _, _, v, _ in sample])

    best = fit(runs)
    rng = random.Random(seed)
    # Runs are resampled within their sitting, so every sitting keeps its
    # term in every draw.
    by_sitting = {}
    for run in runs:
        by_sitting.setdefault(run[3], []).append(run)
    fits = [fit([rng.choice(group) for group in by_sitting.values() for _ in group]) for _ in range(draws)]

    factors = {o: (math.exp(best[i]), *middle_90(math.exp(f[i]) for f in fits if f[i] == f[i]))
               for i, o in enumerate(others, 1)}
    return factors, (best[-1], *middle_90(f[-1] for f in fits))


def steal_adjusted_lines(rows, streams, steal_key="steal"):
    """Report lines for steal_adjusted over one stream count's runs."""
    lines = []
    for key, name in (("p99", "p99"), ("p999", "p99.9")):
        # A run that lost more than 0.1 % was overloaded: its tail is a
        # queue's, not the relay's, and says nothing about steal.
        runs = [(a, st, v, g) for (a, s_), row in rows.items() if s_ == streams and a not in ("direct", "baton-kernel")
                for v, st, loss, g in zip(row[key], row.get(steal_key, []), row.get("loss", []),
                                          row.get("sitting", [0] * len(row[key])))
                if loss <= 0.1 and st == st]
        apart = [False] + ([True] if any(a == "limitfwd-again" for a, *_ in runs) else [])
        for again_apart in apart:
            factors, slope = steal_adjusted(runs, again_apart=again_apart)
            if not factors:
                continue
            sittings = len({g for *_, g in runs})
            lines.append(f"{streams} streams, {name} ÷ limitfwd's at equal steal"
                         f"{', limitfwd-again as an anchor of its own' if again_apart else ''} ({len(runs)} runs with at most 0.1 % loss"
                         f"{f' in {sittings} sittings' if sittings > 1 else ''}; fit of log {name} on the anchor"
                         f"{', the sitting' if sittings > 1 else ''} and log(1 + steal), 90 % bootstrap interval): "
                         + ", ".join(f"{a} {f:.2f} ({lo:.2f}–{hi:.2f})" for a, (f, lo, hi) in factors.items())
                         + f"; slope {slope[0]:.2f} ({slope[1]:.2f}–{slope[2]:.2f}).")
    return lines


def tail_from_sittings(paths):
    """SECTIONS=tail: steal_adjusted over the runs of several saved sittings
    (the KERNEL_OUT.json files of earlier kernel sittings) taken together."""
    import gzip
    rows, span_lines = {}, []
    for path in paths:
        with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as f:
            sitting = json.load(f)
        # Spans pair runs by repetition, so they are given per sitting.
        own = {(key.rsplit(" ", 1)[0], int(key.rsplit(" ", 1)[1])): row for key, row in sitting.items()}
        for streams in sorted({s_ for _, s_ in own}):
            table = spans_lines(own, streams)
            if table:
                span_lines += ["", f"Spans of {os.path.basename(path)}:"] + table
        for anchor_streams, row in own.items():
            merged = rows.setdefault(anchor_streams, {"p99": [], "p999": [], "steal": [], "loss": [], "sitting": []})
            runs = len(row.get("p99", []))
            for k in ("p99", "p999", "steal", "loss"):
                values = row.get(k, [])
                # A sitting without a reading (the oldest have no steal)
                # contributes NaN there, keeping every key's runs aligned.
                merged[k] += values if len(values) == runs else [float("nan")] * runs
            merged["sitting"] += [path] * runs
    lines = [f"Sittings: {', '.join(os.path.basename(p) for p in paths)}", ""]
    for streams in sorted({s_ for _, s_ in rows}):
        lines += steal_adjusted_lines(rows, streams) or [f"{streams} streams: too few runs with at most 0.1 % loss to compare."]
    print("\n".join(lines + span_lines))


def spans_lines(rows, streams):
    """A table of the relays' spans on their core (SPANS=1): quantiles of
    their CPU time and wall length with every run of an anchor taken as
    one, and the median over repetitions of each quantile's ratio to
    limitfwd's in the same repetition (a stall weighs on one repetition,
    not on the whole)."""
    have = [(anchor, row) for (anchor, s_), row in rows.items()
            if s_ == streams and any(row.get("spans", []))]
    if not have:
        return []
    quantiles = (0.5, 0.9, 0.99, 0.999, 1.0)
    floor = rows.get(("limitfwd", streams), {})
    floor_by_rep = {rep: run for rep, run in zip(floor.get("rep", []), floor.get("spans", [])) if run}
    lines = ["", f"{streams} streams: the relay's spans on its core (each time one of its threads got the core until it "
                 "gave it up). CPU time is the scheduler's account: without the steal the guest is told of, with the "
                 "wake-up path; after a stall a span drains the backlog, so spans move with steal too.", "",
             "| anchor | spans | CPU time p50 / p90 / p99 / p99.9 / max, runs as one | ÷ limitfwd's in the same repetition (median) | wall length p50 / p90 / p99 / p99.9 / max |",
             "|---|---|---|---|---|"]
    for anchor, row in have:
        runs = [run for run in row["spans"] if run]
        cpu = [span_quantile([run["cpu"] for run in runs], q) for q in quantiles]
        wall = [span_quantile([run["wall"] for run in runs], q) for q in quantiles]
        count = sum(sum(run["cpu"].values()) for run in runs)
        paired = [(run, floor_by_rep[rep]) for rep, run in zip(row.get("rep", []), row["spans"])
                  if run and rep in floor_by_rep]
        ratios = [statistics.median(span_quantile([ours["cpu"]], q) / span_quantile([theirs["cpu"]], q)
                                    for ours, theirs in paired) if paired else float("nan")
                  for q in quantiles]
        lines.append(f"| {anchor} | {count} | {' / '.join(f'{x:.0f}' for x in cpu)} µs "
                     f"| {' / '.join(f'{x:.2f}' for x in ratios)} ({len(paired)} repetitions) "
                     f"| {' / '.join(f'{x:.0f}' for x in wall)} µs |")
    return lines


def kernel_sitting():
    """The kernel fast path against baton's user-space path and the floor
    (limitfwd), one sitting: CPU per packet at 50 pps per stream over
    established legs (the machine's busy CPU less the generator's own, which
    the `direct` anchor measures in the same sitting), latency there, and
    the highest rate with < 0.1 % loss. Writes KERNEL_OUT (markdown)."""
    global WARMUP
    WARMUP = max(WARMUP, 3.0)
    check_spans()
    anchors = os.environ.get("KERNEL_ANCHORS", "direct limitfwd baton-1w baton-kernel").split()
    # An anchor's binary missing is said at once, not as a failed start
    # minutes into the sitting.
    for anchor in anchors:
        variable, binary = ANCHOR_BINARIES.get(anchor, (None, "given"))
        if not binary:
            sys.exit(f"anchor {anchor} needs {variable} (the path of its binary)")
    seconds = float(os.environ.get("STEADY_SECONDS", "10"))
    rows = {}
    for streams in STREAMS:
        order_rng = random.Random(REPS * 1000 + streams)
        for rep in range(REPS):
            # Each repetition starts one anchor further on, so that no
            # anchor always runs at the same point of the machine's cycles.
            # That order is cyclic, though: each anchor always follows the
            # same one (ORDER=shuffle draws each repetition's order instead,
            # so that what ran before is not tied to the anchor).
            turn = rep % len(anchors)
            order = anchors[turn:] + anchors[:turn]
            if ORDER == "shuffle":
                order_rng.shuffle(order)
            for position, anchor in enumerate(order):
                row = rows.setdefault((anchor, streams), {"machine": [], "own": [], "p50": [], "p99": [], "p999": [], "loss": [], "max": []})
                try:
                    relay = Relay(anchor)
                except NotUp as e:
                    # One start that failed need not end the sitting; it is
                    # reported beside the results.
                    log(f"{anchor} {streams} streams rep {rep}: {e}")
                    row.setdefault("not_up", []).append(rep)
                    continue
                try:
                    r = steady(relay, streams, 50 * streams, seconds)
                finally:
                    relay.stop()
                if r:
                    row.setdefault("rep", []).append(rep)
                    row.setdefault("position", []).append(position)
                    row.setdefault("cdf", []).append(r.get("latency_cdf_us", []))
                    row["machine"].append(r["machine_us_per_packet"])
                    row["own"].append(r["relay_us_per_packet"])
                    row.setdefault("core", []).append(r["relay_core_us_per_packet"])
                    row["loss"].append(r["bench_loss_pct"])
                    row.setdefault("steal", []).append(r.get("steal_ms_per_s", float("nan")))
                    row.setdefault("wakeups", []).append(r.get("relay_wakeups_per_s", float("nan")))
                    if SPANS:
                        # One per run, None where the probe failed, so that
                        # they pair with "rep".
                        row.setdefault("spans", []).append(r.get("spans_us"))
                    if "stall_ms" in r:
                        row.setdefault("stall_ms", []).append(r["stall_ms"])
                    row.setdefault("core_steal", []).append(r.get("relay_core_steal_ms_per_s", float("nan")))
                    for q, key in (("p50", "p50"), ("p99", "p99"), ("p99.9", "p999")):
                        row[key].append(r["latency_us"].get(q, r["latency_us"].get(key, float("nan"))))
                if "max" in SECTIONS:
                    relay = Relay(anchor)
                    try:
                        rate, _ = max_rate(relay, streams, float(os.environ.get("CEILING", "900000")))
                    finally:
                        relay.stop()
                    row["max"].append(rate)
                log(f"{anchor} {streams} streams rep {rep}: {row['machine'][-1] if row['machine'] else float('nan'):.2f} us/packet (machine), "
                    f"max {row['max'][-1] if row['max'] else float('nan'):.0f} pps")
    med = lambda xs: statistics.median(xs) if xs else float("nan")
    stops = [run for row in rows.values() for run in row.get("stall_ms", [])]
    stalled = ""
    if STALL:
        stop_ms, every_ms = STALL.split("/")
        stalled = (f"; the relay stopped {stop_ms} ms every {every_ms} ms (STALL), real stops "
                   f"{med([run['median'] for run in stops]):.2f} ms (median of the runs' medians), "
                   f"{max((run['max'] for run in stops), default=float('nan')):.2f} ms at most")
    lines = [f"Machine: {platform.node()} ({os.cpu_count()} cores, {platform.release()}), "
             f"{time.strftime('%Y-%m-%d')}; relay on core {RELAY_CORE}, generator on core {GEN_CORE}; "
             f"warmup {WARMUP:.0f} s, {seconds:.0f} s measured; medians of {REPS} repetitions, anchors interleaved"
             f"{' in a random order per repetition (ORDER=shuffle)' if ORDER == 'shuffle' else ''}"
             f"{stalled}{'; a bpftrace probe on every context switch (SPANS)' if SPANS else ''}.", "",
             "| anchor | streams | machine CPU per packet at 50 pps | less `direct`'s | relay core's CPU per packet, less `direct`'s | relay process CPU per packet | p50 / p99 / p99.9 | loss | highest rate < 0.1 % loss |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (anchor, streams), row in rows.items():
        base = med(rows.get(("direct", streams), {}).get("machine", []))
        core_base = med(rows.get(("direct", streams), {}).get("core", []))
        core = row.get("core", [])
        lines.append(f"| {anchor} | {streams} | {med(row['machine']):.2f} µs (runs {', '.join(f'{x:.2f}' for x in row['machine'])}) "
                     f"| {med(row['machine']) - base:.2f} µs "
                     f"| {med(core) - core_base:.2f} µs (runs {', '.join(f'{x:.2f}' for x in core)}) "
                     f"| {med(row['own']):.2f} µs "
                     f"| {med(row['p50']):.1f} / {med(row['p99']):.1f} / {med(row['p999']):.1f} µs | {med(row['loss']):.3f} % "
                     f"| {med(row['max']):.0f} (runs {', '.join(f'{x:.0f}' for x in row['max'])}) |")
    # The tail against the floor's, repetition by repetition: each ratio
    # compares two runs minutes apart, so a stall of the machine that hits
    # one sitting's runs weighs on both sides.
    # limitfwd-again (limitfwd run a second time in each repetition) shows
    # how far apart two runs of the same forwarder come out here. The pooled
    # columns take each anchor's repetitions as one run (the mean of their
    # CDFs), so a stall weighs by the packets it delayed, not by which
    # repetition it fell in.
    # The quiet columns pool only the runs the hypervisor left most alone
    # (steal at or under the median of the sitting's runs at that stream
    # count): on a machine that stalls, the tail the relays add themselves.
    quiet_limit = {s_: statistics.median([st for (a, s2), row in rows.items() if s2 == s_ and a != "direct"
                                          for st in row.get("steal", []) if st == st] or [float("inf")])
                   for s_ in STREAMS}

    def quiet(row, streams):
        return [c for c, st in zip(row.get("cdf", []), row.get("steal", [])) if st <= quiet_limit[streams]]

    lines += ["", "| anchor | streams | p99 ÷ limitfwd's, per repetition | median | p99.9 ÷ limitfwd's, per repetition | median | pooled p99 ÷ limitfwd's (90 % bootstrap interval) | pooled p99.9 ÷ limitfwd's (90 % interval) | quiet runs (theirs/limitfwd's) | quiet pooled p99 ÷ limitfwd's | quiet pooled p99.9 ÷ limitfwd's |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (anchor, streams), row in rows.items():
        floor = rows.get(("limitfwd", streams))
        if anchor in ("limitfwd", "direct") or not floor:
            continue
        ratios = {}
        for key in ("p99", "p999"):
            theirs = dict(zip(floor.get("rep", []), floor[key]))
            ratios[key] = [ours / theirs[rep] for rep, ours in zip(row.get("rep", []), row[key])
                           if theirs.get(rep)]
        pooled = [pooled_quantile(row.get("cdf", []), q) / pooled_quantile(floor.get("cdf", []), q)
                  for q in (0.99, 0.999)]
        ours_q, floor_q = quiet(row, streams), quiet(floor, streams)
        calm = [pooled_quantile(ours_q, q) / pooled_quantile(floor_q, q) for q in (0.99, 0.999)]
        by_rep = lambda r: dict(zip(r.get("rep", []), r.get("cdf", [])))
        spread = [bootstrap_ratio(by_rep(row), by_rep(floor), q) for q in (0.99, 0.999)]
        lines.append(f"| {anchor} | {streams} | {', '.join(f'{x:.2f}' for x in ratios['p99'])} | {med(ratios['p99']):.2f} "
                     f"| {', '.join(f'{x:.2f}' for x in ratios['p999'])} | {med(ratios['p999']):.2f} "
                     f"| {pooled[0]:.2f} ({spread[0][0]:.2f}–{spread[0][1]:.2f}) | {pooled[1]:.2f} ({spread[1][0]:.2f}–{spread[1][1]:.2f}) "
                     f"| {len(ours_q)}/{len(floor_q)} | {calm[0]:.2f} | {calm[1]:.2f} |")
    # Each run's p99 beside the time the hypervisor took the machine away
    # during it: where they move together, the tail is the host's.
    lines += ["", "| anchor | streams | per run: p99 (steal, ms per second of the run, all cores / the relay's core; the relay's wake-ups per second) |", "|---|---|---|"]
    for (anchor, streams), row in rows.items():
        if anchor == "direct" or not row.get("steal"):
            continue
        lines.append(f"| {anchor} | {streams} | "
                     + ", ".join(f"{p:.0f} µs ({st:.1f}/{cs:.1f}; {w:.0f})"
                                 for p, st, cs, w in zip(row["p99"], row["steal"], row.get("core_steal", []),
                                                         row.get("wakeups", []))) + " |")
    for streams in STREAMS:
        pairs = [(p, st) for (anchor, s_), row in rows.items()
                 if s_ == streams and anchor not in ("direct", "baton-kernel")
                 for p, st in zip(row["p99"], row.get("steal", [])) if st == st]
        if len(pairs) > 2:
            lines += ["", f"{streams} streams: rank correlation (Spearman) of a user-space run's p99 with its steal time, "
                          f"over {len(pairs)} runs: {spearman([p for p, _ in pairs], [st for _, st in pairs]):.2f}; "
                          f"quiet runs are those with at most {quiet_limit[streams]:.1f} ms of steal per second."]
        adjusted = steal_adjusted_lines(rows, streams)
        if adjusted:
            lines += [""] + adjusted
        lines += spans_lines(rows, streams)
    not_up = [f"{a} at {s_} streams, repetition {', '.join(map(str, row['not_up']))}"
              for (a, s_), row in rows.items() if row.get("not_up")]
    if not_up:
        lines += ["", "Relays that did not come up within 10 s (killed, their runs left out): " + "; ".join(not_up) + "."]
    path = os.environ.get("KERNEL_OUT", "kernel.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    log(f"wrote {path}")
    with open(path + ".json", "w") as f:
        json.dump({f"{a} {s}": row for (a, s), row in rows.items()}, f)
    for streams in STREAMS:
        curves = {}
        for (anchor, s), row in rows.items():
            runs = [c for c in row.get("cdf", []) if c]
            if s != streams or not runs or anchor == "direct":
                continue
            # Per quantile, the median over the repetitions.
            curves[anchor] = [(statistics.median(run[i][0] for run in runs), runs[0][i][1])
                              for i in range(len(runs[0]))]
        svg = os.environ.get("KERNEL_PLOT", "latency") + f"-{streams}.svg"
        plot_cdfs(curves, svg, f"One-way latency at {streams} streams x 50 pps (median of {REPS} runs per quantile)")
        log(f"wrote {svg}")


def plot_cdfs(curves, path, title):
    """Latency CDFs side by side as an SVG: latency on a log axis, the
    quantile on a tail axis (0.9, 0.99, 0.999 equally spaced)."""
    import math
    w, h, left, right, top, bottom = 760, 440, 70, 170, 40, 50
    xs = [x for c in curves.values() for x, _ in c if x > 0]
    lo = 10 ** math.floor(math.log10(max(min(xs), 0.5))) if xs else 1
    hi = 10 ** math.ceil(math.log10(max(xs))) if xs else 10
    tail_max = 4.0
    def px(x):
        return left + (math.log10(max(x, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * (w - left - right)
    def py(q):
        t = min(-math.log10(max(1 - q, 10 ** -tail_max)), tail_max)
        return h - bottom - t / tail_max * (h - top - bottom)
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>']
    decade = lo
    while decade <= hi:
        x = px(decade)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{h - bottom}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{h - bottom + 16}" text-anchor="middle">{decade:g}</text>')
        decade *= 10
    for q, label in ((0.0, "0"), (0.9, "0.9"), (0.99, "0.99"), (0.999, "0.999"), (0.9999, "0.9999")):
        y = py(q)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{w - right}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    out.append(f'<text x="{(left + w - right) / 2}" y="{h - 12}" text-anchor="middle">latency, µs (log)</text>')
    out.append(f'<text x="16" y="{(top + h - bottom) / 2}" transform="rotate(-90 16 {(top + h - bottom) / 2})" text-anchor="middle">fraction of packets at or below</text>')
    for i, (name, curve) in enumerate(curves.items()):
        color = colors[i % len(colors)]
        points = " ".join(f"{px(x):.1f},{py(q):.1f}" for x, q in curve if x > 0)
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>')
        out.append(f'<line x1="{w - right + 12}" y1="{top + 14 + 18 * i}" x2="{w - right + 32}" y2="{top + 14 + 18 * i}" stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{w - right + 38}" y="{top + 18 + 18 * i}">{name}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    if "compare" in SECTIONS:
        compare()
        return
    if "kernel" in SECTIONS:
        kernel_sitting()
        return
    if "tail" in SECTIONS:
        tail_from_sittings(os.environ["TAIL_FROM"].split())
        return
    results = {}
    merged_from = os.environ.get("MERGE")
    if merged_from:
        import ast
        with open(merged_from) as f:
            previous = json.load(f)
        for key, value in previous.items():
            results[ast.literal_eval(key) if key.startswith("(") else key] = value
    if merged_from and SECTIONS:
        results["second_sitting"] = {"sections": " ".join(sorted(SECTIONS)), "anchors": " ".join(ANCHORS)}
    ceilings = {}
    anchors = [a for a in ANCHORS if not a.startswith("rtpengine") or HAVE_RTPENGINE]
    # The generator's ceiling per stream count bounds every search.
    for streams in STREAMS:
        ceilings[streams] = 700_000.0
    if "max" in SECTIONS:
        for anchor in anchors:
            for streams in STREAMS:
                rates, cpus = [], []
                for rep in range(REPS):
                    relay = Relay(anchor)
                    try:
                        rate, best = max_rate(relay, streams, ceilings[streams])
                    finally:
                        relay.stop()
                    rates.append(rate)
                    if best and best["received"] and best["relay_cpu_s"]:
                        cpus.append(1e6 * best["relay_cpu_s"] / best["received"])
                results[(anchor, streams, "max_pps")] = statistics.median(rates)
                if cpus:
                    results[(anchor, streams, "cpu_at_max")] = statistics.median(cpus)
                if anchor == "direct":
                    ceilings[streams] = min(700_000.0, 1.3 * statistics.median(rates) + 1000)
                log(f"{anchor} {streams} streams: max {statistics.median(rates):.0f} pps (runs {rates})")
    if "latency" in SECTIONS:
        # Latency, CPU per packet and memory at 1000 streams x 50 pps.
        for anchor in anchors + ["baton-1w-busy"]:
            if anchor == "direct":
                r = trial(Relay("direct"), 1000, 50_000, seconds=5)
                results[(anchor, "lat")] = r
                continue
            runs = []
            for rep in range(REPS):
                relay = Relay(anchor)
                try:
                    idle = rss_kib(relay.proc.pid) if relay.proc else 0
                    r = trial(relay, 1000, 50_000, seconds=5)
                    if r and relay.proc:
                        r["rss_kib_per_call"] = (rss_kib(relay.proc.pid) - idle) / 500 if relay.anchor != "rtpengine" else None
                    runs.append(r)
                finally:
                    relay.stop()
            runs = [r for r in runs if r]
            if runs:
                med = lambda f: statistics.median(f(r) for r in runs)
                results[(anchor, "lat")] = {
                    "latency_us": {"p50": med(lambda r: r["latency_us"]["p50"]), "p99": med(lambda r: r["latency_us"]["p99"])},
                    "cpu_us_per_packet": med(lambda r: 1e6 * r["relay_cpu_s"] / max(1, r["received"])),
                    "bench_loss_pct": med(lambda r: r["bench_loss_pct"]),
                }
    if "overload" in SECTIONS:
        # Overload: twice baton's highest rate for 10 s, then the normal 50 pps
        # per stream; how soon is every stream through again?
        top = results.get(("baton-1w", 1000, "max_pps"))
        if top:
            relay = Relay("baton-1w")
            try:
                factor = 2 * top / 50_000
                r = trial(relay, 1000, 50_000, seconds=15,
                          extra=("--overload-factor", f"{factor:.3f}", "--overload-secs", "10"))
                if r:
                    r["overload_pps"] = 2 * top
                results["overload"] = r
            finally:
                relay.stop()
    if "scale" in SECTIONS:
        # As many concurrent calls as the open-files limit allows one relay
        # (10 000 with RTCP on separate ports needs 40 000 sockets; where the
        # hard limit cannot be raised, rtcp-mux calls up to the limit), at
        # 5 packets/s per stream.
        limit = int(subprocess.run(["sh", "-c", "ulimit -Hn"], capture_output=True, text=True).stdout.strip() or 0)
        separate = limit >= 41_000
        scale_calls = 10_000 if separate or limit >= 21_000 else (limit - 1_000) // 2 // 1000 * 1000
        relay = Relay("baton-scale")
        try:
            idle = rss_kib(relay.proc.pid)
            gen = subprocess.Popen(pinned(GEN_CORE, [BATON, "load", "--control", f"unix:{relay.sock}", "--calls", str(scale_calls),
                                                     *(["--separate-rtcp"] if separate else []), "--ptime-ms", "200",
                                                     "--duration", "8", "--json"]),
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            peak = idle
            while gen.poll() is None:
                peak = max(peak, rss_kib(relay.proc.pid))
                time.sleep(0.5)
            out = gen.communicate()[0]
            r = json.loads(out.strip().splitlines()[-1]) if out.strip() else None
            if r:
                r["calls"], r["sockets"], r["hard_limit"] = scale_calls, scale_calls * (4 if separate else 2), limit
                r["rss_kib_per_session"] = (peak - idle) / scale_calls
                r["bench_loss_pct"] = 100.0 * (r["sent"] - (r["received"] - r["late"])) / max(1, r["sent"])
            results["scale"] = r
        finally:
            relay.stop()
    if "memory" in SECTIONS:
        # Memory per session: RSS growth with 2500 calls (5000 streams)
        # carrying 50 packets/s per stream, for each relay process.
        for anchor in [a for a in anchors if a in ("baton-1w", "rtpengine")]:
            relay = Relay(anchor)
            try:
                idle = rss_kib(relay.proc.pid)
                args = relay.load_args(5000)
                gen = subprocess.Popen(pinned(GEN_CORE, [BATON, "load", *args, "--duration", "4", "--json"]),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                # baton's calls are created by the generator in its first
                # second or so; rtpengine's already exist.
                time.sleep(2.5)
                busy = rss_kib(relay.proc.pid)
                gen.wait()
                results[("memory", anchor)] = (busy - idle) / 2500
            finally:
                relay.stop()
    if "handoffs" in SECTIONS:
        # 1000 calls (2000 streams at 50 packets/s), a handoff every 10 ms.
        relay = Relay("baton-1w")
        try:
            r = trial(relay, 2000, 100_000, seconds=10, extra=("--handoff-every", "0.01"))
            results["handoffs"] = r
        finally:
            relay.stop()
    if "srtp" in SECTIONS:
        # SRTP <-> RTP bridging, 1000 streams: an SRTP device, a plain
        # remote; the highest rate with < 0.1 % loss, anchors interleaved.
        srtp_anchors = ["baton-srtp"] + (["rtpengine-srtp"] if HAVE_RTPENGINE else [])
        rates = {a: [] for a in srtp_anchors}
        for _ in range(REPS):
            for anchor in srtp_anchors:
                relay = Relay(anchor)
                try:
                    rates[anchor].append(max_rate(relay, 1000, 700_000.0)[0])
                finally:
                    relay.stop()
        for anchor, runs in rates.items():
            results[("srtp", anchor)] = {"max_pps": statistics.median(runs), "runs": runs}
    if "micro" in SECTIONS:
        results["micro"] = micro_benchmarks()
    # With a merge, report every anchor measured in either sitting.
    everyone = ["direct", "forwarder", "rtpengine", "baton-1w", "baton-2w"]
    measured = [a for a in everyone if any(isinstance(k, tuple) and k[0] == a for k in results)]
    write_report(results, measured or anchors)


def micro_benchmarks():
    """Criterion's estimates (ns) of the per-packet logic, this sitting."""
    out = subprocess.run(pinned(RELAY_CORE, ["cargo", "bench", "--quiet", "--bench", "packet_path", "--",
                                             "--warm-up-time", "1", "--measurement-time", "3"]),
                         capture_output=True, text=True).stdout
    found = re.findall(r"^(\S.*?)\n\s+time:\s+\[\S+ \S+ (\S+) (\S+)", out, re.M)
    return [(name.strip(), float(value), unit) for name, value, unit in found]


def targets(results):
    """The issue's targets for baton (one worker, one core) against this
    sitting's figures."""
    rows = []

    def row(target, value, met):
        verdict = "—" if met is None else ("met" if met else "**not met**")
        rows.append(f"| {target} | {value} | {verdict} |")

    for s in sorted({k[1] for k in results if isinstance(k, tuple) and len(k) == 3 and k[2] == "max_pps"}):
        b, f, e = (results.get((a, s, "max_pps")) for a in ("baton-1w", "forwarder", "rtpengine"))
        if b and f:
            row(f"max rate within 10 % of the forwarder, {s} streams", f"{b / f:.2f} × forwarder", b / f >= 0.9)
        if b and e:
            want = 3.5 if s >= 5000 else 1.3
            row(f"max rate ≥ {want}× rtpengine, {s} streams", f"{b / e:.2f} ×", b / e >= want)
    lat, busy = results.get(("baton-1w", "lat")), results.get(("baton-1w-busy", "lat"))
    if lat:
        p99, cpu = lat["latency_us"]["p99"], lat.get("cpu_us_per_packet", 0)
        row("1000 streams × 50 pps: p99 ≤ 100 µs", f"{p99:.1f} µs", p99 <= 100)
        row("1000 streams × 50 pps: CPU ≤ 9 µs per packet", f"{cpu:.2f} µs", cpu <= 9)
    if busy:
        p99 = busy["latency_us"]["p99"]
        row("the same with busy polling: p99 ≤ 25 µs", f"{p99:.1f} µs", p99 <= 25)
    o = results.get("overload")
    if o and o.get("overload"):
        ov = o["overload"]
        ok = ov["recovered"] == ov["streams"] and ov["recovery_ms"]["max"] <= 1000
        row("2× overload for 10 s: every stream forwards again within 1 s",
            f"{ov['recovered']}/{ov['streams']} streams, max {ov['recovery_ms']['max']:.1f} ms", ok)
    h = results.get("handoffs")
    if h:
        gap = h["handoffs"]["gap_ms"]["p99"]
        row("1000 calls, a handoff every 10 ms: 0 continuity violations",
            f"{h['continuity_violations']} ({h['handoffs']['completed']} handoffs, {h['handoffs']['failed']} failed)",
            h["continuity_violations"] == 0 and h["handoffs"]["failed"] == 0)
        row("… media gap p99 ≤ 20 ms", f"{gap:.2f} ms", gap <= 20)
    sc = results.get("scale")
    if sc:
        row("10 000 concurrent calls (40 000 sockets), memory per session reported",
            f"{sc['calls']:,} calls ({sc['sockets']:,} sockets), {sc['rss_kib_per_session']:.1f} KiB per session",
            sc["calls"] >= 10_000 or None)
    one, two = results.get(("baton-1w", 1000, "max_pps")), results.get(("baton-2w", 1000, "max_pps"))
    if one and two:
        row("two workers on two cores ≥ 1.8× one worker (1000 streams)",
            f"{two / one:.2f} × (no third core: the generator shares a core with a worker)", None)
    if not rows:
        return []
    notes = []
    f5, e5, b5 = (results.get((a, 5000, "max_pps")) for a in ("forwarder", "rtpengine", "baton-1w"))
    if f5 and e5 and b5 and b5 / e5 < 3.5:
        notes.append(f"- **3.5× rtpengine at 5000 streams** was set from anchors where the forwarder reached ≥ 400k "
                     f"packets/s and rtpengine 109k. In this sitting the forwarder itself reaches only {f5 / e5:.2f}× "
                     f"rtpengine ({f5:,.0f} against {e5:,.0f}). With 5000 streams each port has one packet per wake-up, "
                     "so every relay pays an epoll event, a recvmmsg and a sendmmsg per packet, and the kernel takes "
                     "most of the CPU (perf on baton-1w at 250k packets/s: its own functions are a few percent of the samples, "
                     "the kernel's UDP and loopback path nearly all the rest). baton is at "
                     f"{b5 / f5:.2f}× the forwarder. Going further needs fewer syscalls per packet than the forwarder "
                     "uses (io_uring, or forwarding in the kernel), not cheaper per-packet logic.")
    if busy and busy["latency_us"]["p99"] > 25:
        notes.append(f"- **Busy polling** takes the median from {lat['latency_us']['p50']:.1f} to "
                     f"{busy['latency_us']['p50']:.1f} µs, but p99 stays near the others'. This VM stalls the relay's core "
                     "for 1–3 ms every 0.4–1 s. A trace of every packet more than 0.5 ms late found these stalls in "
                     "the forwarder's runs as well as baton's, and none in direct runs on the generator's core. "
                     "They set p99.9 and max for every anchor, and p99 too when they fall badly.")
    if sc and sc["calls"] < 10_000:
        notes.append(f"- **10 000 calls**: the open-files hard limit here is {sc['hard_limit']:,}, and the sandbox "
                     "has no CAP_SYS_RESOURCE to raise it. The largest run that fits is "
                     f"{sc['calls']:,} calls with rtcp-mux (two sockets per call).")
    if one and two:
        notes.append("- **Two workers**: with two cores, the generator shares core 1 with the second worker. baton-2w "
                     "therefore measures that contention, not scaling. A third core is needed for this target.")
    for s_ in (100, 1000):
        b, f = results.get(("baton-1w", s_, "max_pps")), results.get(("forwarder", s_, "max_pps"))
        if b and f and b > 1.1 * f:
            notes.append("- **baton above the forwarder**: at 100 and 1000 streams baton-1w forwards more than "
                         "benches/forwarder.rs and uses less CPU per packet at its highest rate (table above). Both "
                         "make the same syscalls. I have not found the cause, so the forwarder is an estimate of "
                         "the floor, not a bound.")
            break
    return ["## Targets", "",
            "The issue's targets for baton with one worker on one core, against this sitting "
            "(— : cannot be measured on this machine; the notes below the table say why).", "",
            "| target | measured | |", "|---|---|---|", *rows, "", *notes, ""]


def write_report(results, anchors):
    # Columns: every stream count measured (in either sitting, with MERGE).
    streams_measured = sorted({k[1] for k in results if isinstance(k, tuple) and len(k) == 3 and k[2] == "max_pps"})
    STREAMS = streams_measured or globals()["STREAMS"]
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
    kernel = platform.release()
    second = results.get("second_sitting")
    rtpengine_version = subprocess.run(["sh", "-c", "rtpengine --version 2>&1 | head -1"], capture_output=True, text=True).stdout.strip() if HAVE_RTPENGINE else "not installed"
    lines = ["# Benchmarks", "",
             f"Measured {time.strftime('%Y-%m-%d')} by `scripts/bench.sh` (REPS={REPS}, STEPS={STEPS}, TRIAL={TRIAL} s) "
             f"on {os.cpu_count()} cores ({cpu}), Linux {kernel}; rtpengine: {rtpengine_version}.",
             "The relay is pinned to core 0 and the generator (`baton load`, one thread) to core 1; "
             "baton-2w uses both cores, so it shares core 1 with the generator (this machine has no third core).",
             f"The generator's calls share {SHARE} sockets per side (`--share-sockets {SHARE}`; the forwarder and "
             "rtpengine get the same addresses through their plans), so its sends and receives are batched; every relay "
             "still has a port per call side and gets one packet per port per wake-up. Arrivals are timed by the "
             "kernel's receive timestamps." if SHARE else
             "The generator has a socket per call side.",
             "Streams are one-way RTP flows (a call is two). Medians of the repetitions.",
             *([f"Sections `{second['sections']}` (anchors `{second['anchors']}`) were measured in a second "
                "sitting the same day on the same machine and merged into the first's figures "
                f"(`MERGE=first-sitting.json SECTIONS='{second['sections']}' ANCHORS='{second['anchors']}' "
                "scripts/bench.sh`, where first-sitting.json is the JSON line the first sitting printed)."]
               if second else []), "",
             "Reading the figures:",
             "- `direct` is the generator alone (one thread, one core): an anchor at or near it is limited by the "
             "generator, not by itself, and the comparison at that stream count says only that.",
             "- The forwarder (benches/forwarder.rs) does recvmmsg/sendmmsg and nothing else: the syscall floor.",
             "- CPU per packet is the relay process's user+system time over the packets the generator received.",
             "- rtpengine runs in userspace with one thread (no kernel module here), its calls set up over its ng "
             "protocol, fresh calls for every trial (it discards a leg for the rest of the call after repeated "
             "receive-queue overflows).", "",
             "## Highest forwarded rate with < 0.1 % loss (packets/s; late > 50 ms counts as lost)", "",
             "| | " + " | ".join(f"{s} streams" for s in STREAMS) + " |",
             "|---|" + "---|" * len(STREAMS)]
    for anchor in anchors:
        lines.append(f"| {anchor} | " + " | ".join(f"{results.get((anchor, s, 'max_pps'), 0):,.0f}" for s in STREAMS) + " |")
    lines += ["", "Ratios (same sitting):", ""]
    for s in STREAMS:
        b = results.get(("baton-1w", s, "max_pps"), 0)
        parts = []
        for other in ("rtpengine", "forwarder", "direct"):
            o = results.get((other, s, "max_pps"))
            if o:
                parts.append(f"baton-1w / {other} = {b / o:.2f}")
        lines.append(f"- {s} streams: " + ", ".join(parts))
    if any(isinstance(k, tuple) and len(k) == 3 and k[2] == "cpu_at_max" for k in results):
        lines += ["", "Relay CPU per forwarded packet at that highest rate (µs; compare the 50 000 packets/s "
                  "table below, where wake-ups dominate):", "",
                  "| | " + " | ".join(f"{s} streams" for s in STREAMS) + " |",
                  "|---|" + "---|" * len(STREAMS)]
        for anchor in anchors:
            if anchor == "direct":
                continue
            lines.append(f"| {anchor} | " + " | ".join(
                f"{results[(anchor, s, 'cpu_at_max')]:.2f}" if (anchor, s, "cpu_at_max") in results else "-"
                for s in STREAMS) + " |")
    lines += ["", "## 1000 streams x 50 packets/s (50 000 packets/s)", "",
              "| | p50 µs | p99 µs | relay CPU µs/packet | loss % |", "|---|---|---|---|---|"]
    for anchor in anchors + ["baton-1w-busy"]:
        r = results.get((anchor, "lat"))
        if r:
            lines.append(f"| {anchor} | {r['latency_us']['p50']:.1f} | {r['latency_us']['p99']:.1f} | "
                         f"{r.get('cpu_us_per_packet', 0):.2f} | {r['bench_loss_pct']:.3f} |")
    lines += ["", "baton-1w-busy is baton-1w with `--busy-poll` (the worker spins instead of sleeping in epoll).", "",
              "Memory per session (growth of the relay's RSS with 2500 calls carrying 50 packets/s per stream): " +
              (", ".join(f"{a} {results[('memory', a)]:.1f} KiB" for a in ("baton-1w", "rtpengine") if ("memory", a) in results)
               or f"baton-1w {results.get('rss_kib_per_session', 0):.1f} KiB") + ".", ""]
    o = results.get("overload")
    if o and o.get("overload"):
        ov = o["overload"]
        lines += ["## Overload", "",
                  f"baton-1w, 1000 streams: {o['overload_pps']:,.0f} packets/s asked for (twice its highest rate) for 10 s, then 50 000 "
                  f"packets/s. " + (f"The generator could not offer all of it (see `direct`): it skipped {o.get('skipped', 0):,} packets "
                  f"it could not send in time, so for those 10 s the relay saw the generator's own ceiling. "
                  if o.get("skipped", 0) > 0.01 * o.get("sent", 0) else
                  f"The generator offered it ({o.get('skipped', 0):,} packets skipped). ") +
                  f"Loss over the whole run: {o['bench_loss_pct']:.1f} %. "
                  f"{ov['recovered']} of {ov['streams']} streams got through again after the overload; "
                  f"recovery p50 {ov['recovery_ms']['p50']:.1f} ms, max {ov['recovery_ms']['max']:.1f} ms "
                  f"(end of overload to arrival of the first packet sent after it).", ""]
    sc = results.get("scale")
    if sc:
        lines += ["## Many concurrent calls", "",
                  f"baton-1w, {sc['calls']:,} calls ({sc['sockets']:,} relay sockets; the open-files hard limit here is "
                  f"{sc['hard_limit']:,} and this sandbox has no CAP_SYS_RESOURCE to raise it, so 10 000 calls with "
                  f"separate RTCP ports (40 000 sockets) cannot run in one process on this machine), 5 packets/s per "
                  f"stream for 8 s: {sc['sent']:,} sent, {sc['received']:,} received, loss {sc['bench_loss_pct']:.3f} %, "
                  f"{sc['continuity_violations']} continuity violations, p99 latency {sc['latency_us']['p99']:.0f} µs; "
                  f"{sc['rss_kib_per_session']:.1f} KiB RSS per session at the peak. Control latency p50/p99: create "
                  f"{sc['control_ms']['create']['p50']:.2f}/{sc['control_ms']['create']['p99']:.2f} ms.", ""]
    h = results.get("handoffs")
    if h:
        lines += ["## Handoffs under load", "",
                  f"baton-1w, 1000 calls (2000 streams) at 50 pps, a handoff every 10 ms for 10 s: "
                  f"{h['handoffs']['completed']} completed, {h['handoffs']['failed']} failed, "
                  f"{h['continuity_violations']} continuity violations, loss {h['bench_loss_pct']:.3f} % "
                  f"(packets an old device sends after its switch are dropped by design and not counted as loss by the analyser), "
                  f"media gap p50/p99/max {h['handoffs']['gap_ms']['p50']:.2f}/{h['handoffs']['gap_ms']['p99']:.2f}/{h['handoffs']['gap_ms']['max']:.2f} ms.", ""]
    srtp = {a: results[("srtp", a)] for a in ("baton-srtp", "rtpengine-srtp") if ("srtp", a) in results}
    if srtp:
        plain = results.get(("baton-1w", 1000, "max_pps"))
        lines += ["## SRTP ↔ RTP bridging (1000 streams)", "",
                  "An SRTP device (AES_CM_128_HMAC_SHA1_80, `baton load --srtp device`; rtpengine given the device's "
                  "SDES offer and `transport-protocol RTP/AVP` over ng) bridged to a plain remote; the generator "
                  "decrypts before judging, so what does not decrypt is lost.", "",
                  "| anchor | highest rate < 0.1 % loss | runs |", "|---|---|---|"]
        lines += [f"| {a} | {r['max_pps']:,.0f} | {', '.join(f'{x:,.0f}' for x in r['runs'])} |" for a, r in srtp.items()]
        b, e = (srtp.get(a, {}).get("max_pps") for a in ("baton-srtp", "rtpengine-srtp"))
        lines += [""]
        if b and e:
            lines += [f"baton-srtp against rtpengine-srtp: {b / e:.2f}× (goal 1.5×)."]
        if b and plain:
            lines += [f"baton-srtp against baton-1w's plain RTP at 1000 streams: {b / plain:.2f}× (goal 0.6×)."]
        lines += [""]
    lines += targets(results)
    micro = results.get("micro") or []
    if micro:
        lines += ["## Per-packet logic (criterion, `cargo bench --bench packet_path`)", "",
                  "| | time per packet |", "|---|---|"]
        lines += [f"| {name} | {value} {unit} |" for name, value, unit in micro]
        lines += ["", "Allocations per RTP packet: 0 (asserted by `relay/tests/alloc.rs` with a counting allocator, "
                  "over the state machine and over a worker forwarding through real sockets).", ""]
    path = os.environ.get("OUT", "BENCHMARKS.md.new")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    log(f"wrote {path}")
    print(json.dumps({str(k): v for k, v in results.items()}, default=str))


if __name__ == "__main__":
    main()
