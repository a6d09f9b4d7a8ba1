#!/usr/bin/env python3
"""RTP for the Kamailio end-to-end run: the user's devices, one after
another as the call moves between them, talk to bob through the relay;
bob's socket records what it receives and says whether it was one
continuous stream.

The SIPp user agents write the relay port from each 200 OK into a file;
this script waits for those files to know where to send.
"""

import argparse
import os
import socket
import struct
import sys
import threading
import time

PTIME = 0.02
SAMPLES = 160


def wait_for(path, deadline):
    while time.monotonic() < deadline:
        if os.path.exists(path):
            text = open(path).read().strip()
            if text.isdigit():
                return int(text)
        time.sleep(0.02)
    sys.exit(f"media: {path} never appeared")


class Talker:
    """One device's RTP stream, from its own socket."""

    def __init__(self, port, ssrc, seq, ts, tag):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.ssrc, self.seq, self.ts, self.tag = ssrc, seq, ts, tag

    def send(self, to):
        header = struct.pack("!BBHII", 0x80, 8, self.seq & 0xFFFF, self.ts & 0xFFFFFFFF, self.ssrc)
        self.sock.sendto(header + bytes([self.tag]) * SAMPLES, to)
        self.seq += 1
        self.ts += SAMPLES


def write_pcap(path, packets, to):
    """The datagrams bob received as a pcap (link type RAW: an IPv4 and a
    UDP header before each), as a capture on the loopback would hold them."""
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
        for at, (src_ip, src_port), data in packets:
            udp = struct.pack("!HHHH", src_port, to[1], 8 + len(data), 0)
            total = 20 + len(udp) + len(data)
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 17, 0,
                             socket.inet_aton(src_ip), socket.inet_aton(to[0]))
            checksum = sum(struct.unpack("!10H", ip))
            checksum = (checksum & 0xFFFF) + (checksum >> 16)
            checksum = (checksum & 0xFFFF) + (checksum >> 16)
            ip = ip[:10] + struct.pack("!H", ~checksum & 0xFFFF) + ip[12:]
            out.write(struct.pack("<IIII", int(at), int((at % 1) * 1e6), total, total))
            out.write(ip + udp + data)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bob-port", type=int, required=True)
    p.add_argument(
        "--device",
        action="append",
        required=True,
        metavar="NAME:PORT:RELAY_FILE",
        help="the user's devices in the order they hold the call",
    )
    p.add_argument(
        "--unheard",
        metavar="NAME:PORT:RELAY_FILE",
        help="a device that sends once its relay file appears but must never be heard",
    )
    p.add_argument("--last-seconds", type=float, default=2.0)
    p.add_argument("--timeout", type=float, default=50.0)
    p.add_argument("--pcap", help="write what bob received here, for tshark")
    p.add_argument("--relay-ip", default="127.0.0.1", help="the relay's media address")
    p.add_argument(
        "--failovers",
        type=int,
        default=0,
        help="relay failovers during the call: each may skip numbers forward once (packets lost while no relay forwarded), never repeat one",
    )
    args = p.parse_args()
    deadline = time.monotonic() + args.timeout

    bob = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    bob.bind(("127.0.0.1", args.bob_port))
    bob.settimeout(0.2)
    received = []
    captured = []
    stop = threading.Event()

    def listen():
        while not stop.is_set():
            try:
                data, source = bob.recvfrom(2048)
            except socket.timeout:
                continue
            captured.append((time.time(), source, data))
            if len(data) >= 13:
                _, _, seq, ts, ssrc = struct.unpack("!BBHII", data[:12])
                received.append((seq, ts, ssrc, data[12]))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()

    # Each device its own SSRC, numbering, clock and payload byte.
    devices = []
    for i, spec in enumerate(args.device):
        name, port, relay_file = spec.split(":", 2)
        talker = Talker(int(port), 0xA11CE0A0 + 0x1111 * i, 59000 - 9000 * i, 28000 + 7000 * i, 0xA0 + i)
        devices.append((name, talker, relay_file))
    stray = None
    if args.unheard:
        name, port, relay_file = args.unheard.split(":", 2)
        stray = [name, Talker(int(port), 0x5EEDBEEF, 100, 100, 0xEE), relay_file, None]
    # A device talks from its 200 OK (which names its relay port) until the
    # next device's, and a little after (a real device's last packets race
    # the BYE that ends its leg); the last one for --last-seconds.
    current = 0
    relays = [None] * len(devices)
    relays[0] = (args.relay_ip, wait_for(devices[0][2], deadline))
    print(f"media: device {devices[0][0]} sends to relay port {relays[0][1]}")
    overlap_until = 0.0
    last_until = None
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        now = time.monotonic()
        following = current + 1
        if following < len(devices) and os.path.exists(devices[following][2]):
            text = open(devices[following][2]).read().strip()
            if text.isdigit():
                relays[following] = (args.relay_ip, int(text))
                print(f"media: device {devices[following][0]} sends to relay port {text}")
                current = following
                overlap_until = now + 0.1
        if current == len(devices) - 1 and last_until is None:
            last_until = now + args.last_seconds
        if stray is not None:
            if stray[3] is None and os.path.exists(stray[2]):
                text = open(stray[2]).read().strip()
                if text.isdigit():
                    stray[3] = (args.relay_ip, int(text))
            if stray[3] is not None:
                stray[1].send(stray[3])
        if current > 0 and now < overlap_until:
            devices[current - 1][1].send(relays[current - 1])
        devices[current][1].send(relays[current])
        if last_until is not None and now >= last_until:
            break
        next_at += PTIME
        time.sleep(max(0.0, next_at - time.monotonic()))
    time.sleep(0.3)
    stop.set()
    listener.join()

    if args.pcap:
        write_pcap(args.pcap, captured, ("127.0.0.1", args.bob_port))

    ssrcs = sorted({ssrc for _, _, ssrc, _ in received})
    steps = [(s2 - s1) & 0xFFFF for (s1, _, _, _), (s2, _, _, _) in zip(received, received[1:])]
    # A failover skips numbers forward once (what was lost meanwhile).
    jumps = sum(1 for step in steps if 1 < step < 0x8000)
    errors = sum(1 for step in steps if step != 1) - min(jumps, args.failovers)
    backwards = sum(
        1
        for (_, t1, _, _), (_, t2, _, _) in zip(received, received[1:])
        if ((t2 - t1) & 0xFFFFFFFF) >= 0x80000000
    )
    heard = [sum(1 for *_, tag in received if tag == 0xA0 + i) for i in range(len(devices))]
    switches = sum(1 for (*_, t1), (*_, t2) in zip(received, received[1:]) if t1 != t2)
    parts = ", ".join(f"{n} from {name}" for n, (name, _, _) in zip(heard, devices))
    print(f"bob received: {len(received)} packets ({parts})")
    print(f"SSRCs seen: {len(ssrcs)} {[hex(s) for s in ssrcs]}")
    print(f"sequence errors (gap or repeat): {errors}")
    if args.failovers:
        print(f"forward jumps (failovers): {jumps}")
    print(f"timestamps going backwards: {backwards}")
    print(f"switches between devices: {switches}")
    stray_heard = sum(1 for *_, tag in received if tag == 0xEE)
    if stray is not None:
        print(f"device {stray[0]} (must not be heard): sent {'yes' if stray[3] else 'no'}, heard {stray_heard}")
    ok = (
        len(ssrcs) == 1
        and errors == 0
        and backwards == 0
        and all(n > 0 for n in heard)
        and switches == len(devices) - 1
        and (stray is None or (stray[3] is not None and stray_heard == 0))
    )
    print("RESULT: " + ("one continuous stream" if ok else "NOT one continuous stream"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
