#!/usr/bin/env python3
"""RTP for the Kamailio end-to-end run: device A, then device B, talk to
bob through the relay; bob's socket records what it receives and says
whether it was one continuous stream.

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


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bob-port", type=int, required=True)
    p.add_argument("--a-port", type=int, required=True)
    p.add_argument("--b-port", type=int, required=True)
    p.add_argument("--a-relay-file", required=True)
    p.add_argument("--b-relay-file", required=True)
    p.add_argument("--b-seconds", type=float, default=2.0)
    p.add_argument("--timeout", type=float, default=40.0)
    args = p.parse_args()
    deadline = time.monotonic() + args.timeout

    bob = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    bob.bind(("127.0.0.1", args.bob_port))
    bob.settimeout(0.2)
    received = []
    stop = threading.Event()

    def listen():
        while not stop.is_set():
            try:
                data, _ = bob.recvfrom(2048)
            except socket.timeout:
                continue
            if len(data) >= 13:
                _, _, seq, ts, ssrc = struct.unpack("!BBHII", data[:12])
                received.append((seq, ts, ssrc, data[12]))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()

    a = Talker(args.a_port, 0xA11CE0A0, 59000, 28000, 0xAA)
    b = Talker(args.b_port, 0xB0B0B0B0, 20000, 240, 0xBB)
    a_to = ("127.0.0.1", wait_for(args.a_relay_file, deadline))
    print(f"media: device A sends to relay port {a_to[1]}")
    # A talks until B's 200 OK names B's relay port, and a little after
    # (a real device's last packets race its BYE).
    b_to = None
    overlap_until = None
    b_until = None
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        now = time.monotonic()
        if b_to is None and os.path.exists(args.b_relay_file):
            text = open(args.b_relay_file).read().strip()
            if text.isdigit():
                b_to = ("127.0.0.1", int(text))
                overlap_until = now + 0.1
                b_until = now + args.b_seconds
                print(f"media: device B sends to relay port {b_to[1]}")
        if b_to is None or now < overlap_until:
            a.send(a_to)
        if b_to is not None:
            b.send(b_to)
            if now >= b_until:
                break
        next_at += PTIME
        time.sleep(max(0.0, next_at - time.monotonic()))
    time.sleep(0.3)
    stop.set()
    listener.join()

    ssrcs = sorted({ssrc for _, _, ssrc, _ in received})
    errors = sum(
        1 for (s1, _, _, _), (s2, _, _, _) in zip(received, received[1:]) if (s2 - s1) & 0xFFFF != 1
    )
    backwards = sum(
        1
        for (_, t1, _, _), (_, t2, _, _) in zip(received, received[1:])
        if ((t2 - t1) & 0xFFFFFFFF) >= 0x80000000
    )
    from_a = sum(1 for *_, tag in received if tag == 0xAA)
    from_b = sum(1 for *_, tag in received if tag == 0xBB)
    switches = sum(1 for (*_, t1), (*_, t2) in zip(received, received[1:]) if t1 != t2)
    print(f"bob received: {len(received)} packets ({from_a} from A, {from_b} from B)")
    print(f"SSRCs seen: {len(ssrcs)} {[hex(s) for s in ssrcs]}")
    print(f"sequence errors (gap or repeat): {errors}")
    print(f"timestamps going backwards: {backwards}")
    print(f"switches between devices: {switches}")
    ok = len(ssrcs) == 1 and errors == 0 and backwards == 0 and from_a > 0 and from_b > 0 and switches == 1
    print("RESULT: " + ("one continuous stream" if ok else "NOT one continuous stream"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
