#!/usr/bin/env python3
"""A minimal record-routing SIP proxy for the Kamailio e2e run (UDP,
127.0.0.1, stateless): it stands between the Kamailio under test and the
remote party, as a carrier's SBC would, so the remote's dialog has a route
set beyond the Kamailio. It record-routes initial requests, follows loose
Route headers, and logs the request line of everything it forwards.

Usage: rr_proxy.py PORT LOG_FILE   (stops after --seconds, default 60)
"""

import argparse
import hashlib
import re
import socket
import time


def header_lines(message):
    head, _, body = message.partition("\r\n\r\n")
    return head.split("\r\n"), body


def host_port(uri):
    """host and port of a SIP URI (in <> or bare)."""
    m = re.search(r"sip:(?:[^@;>]*@)?([^:;>]+)(?::(\d+))?", uri)
    return m.group(1), int(m.group(2) or 5060)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("log")
    p.add_argument("--seconds", type=float, default=60.0)
    args = p.parse_args()
    me = f"127.0.0.1:{args.port}"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", args.port))
    sock.settimeout(0.2)
    log = open(args.log, "a", buffering=1)
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        try:
            data, _ = sock.recvfrom(65535)
        except socket.timeout:
            continue
        text = data.decode("utf-8", "replace")
        lines, body = header_lines(text)
        first = lines[0]
        if first.startswith("SIP/2.0"):
            # A response: drop our Via (a header of its own, or the first
            # value of a combined one), send it to the next one.
            top = next((i for i, l in enumerate(lines) if l.lower().startswith("via:")), None)
            if top is None or me not in lines[top].split(",")[0]:
                continue
            values = lines[top].split(":", 1)[1].split(",")
            if len(values) > 1:
                lines[top] = "Via:" + ",".join(values[1:])
            else:
                del lines[top]
            nxt = next((l for l in lines if l.lower().startswith("via:")), None)
            if nxt is None:
                continue
            m = re.search(r"SIP/2.0/UDP ([^;:\s,]+):(\d+)", nxt)
            sock.sendto(("\r\n".join(lines) + "\r\n\r\n" + body).encode(), (m.group(1), int(m.group(2))))
            log.write(f"response {first}\n")
            continue
        # A request: consume a Route naming us, record-route initial ones.
        routes = [i for i, l in enumerate(lines) if l.lower().startswith("route:")]
        if routes:
            values = [v.strip() for v in lines[routes[0]].split(":", 1)[1].split(",")]
            if me in values[0]:
                values = values[1:]
                if values:
                    lines[routes[0]] = "Route: " + ", ".join(values)
                else:
                    del lines[routes[0]]
        to = next(l for l in lines if l.lower().startswith("to:"))
        if ";tag=" not in to and not first.startswith("ACK") and not first.startswith("CANCEL"):
            lines.insert(1, f"Record-Route: <sip:{me};lr>")
        branch = "z9hG4bK" + hashlib.sha1(data).hexdigest()[:16]
        lines.insert(1, f"Via: SIP/2.0/UDP {me};branch={branch}")
        route = next((l for l in lines if l.lower().startswith("route:")), None)
        target = route.split(":", 1)[1].split(",")[0] if route else first.split()[1]
        sock.sendto(("\r\n".join(lines) + "\r\n\r\n" + body).encode(), host_port(target))
        log.write(f"request {first}\n")


main()
