#!/usr/bin/env python3
"""A WebRTC peer for baton's tests, on aiortc (a WebRTC stack no one here
wrote): ICE (a full agent, controlling), DTLS-SRTP, rtcp-mux, BUNDLE.

It speaks JSON lines on stdin/stdout with the test that drives it:

  offer mode:  prints {"offer": SDP}, reads {"answer": SDP}
  answer mode: reads {"offer": SDP}, prints {"answer": SDP}

then sends audio (silence encoded by the negotiated codec) for --seconds,
counts what it receives, and prints {"result": {...}}: ICE and DTLS
states, RTP packets sent and received (from getStats), the SSRCs seen.

--bad-fingerprint replaces its a=fingerprint with another certificate's,
so the relay must refuse the handshake. Host candidates are on 127.0.0.1
only: the tests never send anywhere but loopback.
"""

import argparse
import asyncio
import json
import sys

import aioice.ice

# Loopback only (aioice leaves 127.0.0.1 out of its host candidates).
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []

from aiortc import RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError  # noqa: E402


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def read_line():
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    if not line:
        raise SystemExit("stdin closed")
    return json.loads(line)


def corrupt_fingerprint(sdp):
    out = []
    for line in sdp.splitlines():
        if line.startswith("a=fingerprint:sha-256 "):
            digest = line.split(" ", 1)[1].split(":")
            digest[0] = "%02X" % (int(digest[0], 16) ^ 0xFF)
            line = "a=fingerprint:sha-256 " + ":".join(digest)
        out.append(line)
    return "\r\n".join(out) + "\r\n"


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["offer", "answer"])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--bad-fingerprint", action="store_true")
    args = parser.parse_args()

    pc = RTCPeerConnection()
    states = {"ice": [], "connection": []}
    pc.on("iceconnectionstatechange", lambda: states["ice"].append(pc.iceConnectionState))
    pc.on("connectionstatechange", lambda: states["connection"].append(pc.connectionState))
    frames = {"count": 0}

    @pc.on("track")
    def on_track(track):
        async def consume():
            while True:
                try:
                    await track.recv()
                except MediaStreamError:
                    return
                frames["count"] += 1

        asyncio.ensure_future(consume())

    pc.addTrack(AudioStreamTrack())
    if args.mode == "offer":
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        if args.bad_fingerprint:
            sdp = corrupt_fingerprint(sdp)
        emit({"offer": sdp})
        answer = (await read_line())["answer"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    else:
        offer = (await read_line())["offer"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        sdp = pc.localDescription.sdp
        if args.bad_fingerprint:
            sdp = corrupt_fingerprint(sdp)
        emit({"answer": sdp})

    await asyncio.sleep(args.seconds)
    stats = await pc.getStats()
    inbound = [s for s in stats.values() if s.type == "inbound-rtp"]
    outbound = [s for s in stats.values() if s.type == "outbound-rtp"]
    result = {
        "ice": pc.iceConnectionState,
        "connection": pc.connectionState,
        "ice_states": states["ice"],
        "connection_states": states["connection"],
        "packets_received": sum(s.packetsReceived for s in inbound),
        "packets_sent": sum(s.packetsSent for s in outbound),
        "frames_decoded": frames["count"],
        "ssrcs_received": sorted({s.ssrc for s in inbound}),
    }
    emit({"result": result})
    await pc.close()


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(), timeout=60))
