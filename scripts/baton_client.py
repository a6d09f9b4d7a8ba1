#!/usr/bin/env python3
"""A baton control client for signalling-side developers, in Python.

It speaks baton's control protocol with the message classes that `protoc`
generates from proto/baton.proto (generated into a temporary directory at
start, so they always match the .proto next to this script), and walks a
call through the relay the way a SIP proxy would:

  1. the caller's INVITE carries an SDP offer  -> CreateSession(sdp=offer)
     the relay answers with the offer to forward to the callee;
  2. the callee's 200 OK carries the answer     -> UpdateSession(sdp=answer)
     the relay answers with the answer to forward to the caller;
  3. the registrar saw device B register        -> RegisterDevice(Contact)
  4. B sends INVITE with Replaces and its offer -> Transfer(replaces, Contact, sdp)
     the relay answers with the SDP for B's 200 OK;
  5. the call ends                              -> DeleteSession

Needs: protoc and the protobuf Python package (Debian: protobuf-compiler and
python3-protobuf; or `pip install protobuf`).

  python3 scripts/baton_client.py --control tcp:127.0.0.1:7120 demo
  python3 scripts/baton_client.py --control unix:/run/baton/control.sock demo \\
      --offer offer.sdp --answer answer.sdp --b-offer b.sdp

The last line of output is a JSON summary (session id and every SDP body).
"""

import argparse
import importlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(HERE, "..", "proto")


def load_messages():
    """Generates baton_pb2 from the .proto with protoc and imports it."""
    protoc = shutil.which("protoc")
    if protoc is None:
        sys.exit("protoc not found: install protobuf-compiler (or grpcio-tools)")
    out = tempfile.mkdtemp(prefix="baton-pb2-")
    subprocess.run(
        [protoc, f"--proto_path={PROTO_DIR}", f"--python_out={out}", "baton.proto"],
        check=True,
    )
    sys.path.insert(0, out)
    return importlib.import_module("baton_pb2")


class RelayError(Exception):
    """The relay answered with an error."""

    def __init__(self, pb, error):
        self.code = pb.Code.Name(error.code)
        self.message = error.message
        super().__init__(f"{self.code}: {self.message}")


class Client:
    """One control connection: framed protobuf requests, answers by id."""

    def __init__(self, pb, control, token=None):
        self.pb = pb
        self.next_id = 1
        kind, _, where = control.partition(":")
        if kind == "unix":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(where)
        elif kind == "tcp":
            host, _, port = where.rpartition(":")
            self.sock = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
        else:
            sys.exit(f"control address {control!r}: expected tcp:HOST:PORT or unix:PATH")
        if token:
            self.call("authenticate", self.pb.AuthenticateRequest(token=token))

    def _read_exact(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the relay closed the connection")
            data += chunk
        return data

    def call(self, command, message):
        """Sends one request and returns the response message."""
        request = self.pb.Request(id=self.next_id)
        self.next_id += 1
        getattr(request, command).CopyFrom(message)
        body = request.SerializeToString()
        # Frame: flags byte 0, big-endian length, message.
        self.sock.sendall(struct.pack(">BI", 0, len(body)) + body)
        while True:
            flags, length = struct.unpack(">BI", self._read_exact(5))
            if flags != 0:
                raise ConnectionError(f"unexpected frame flags {flags}")
            reply = self.pb.ServerMessage.FromString(self._read_exact(length))
            if reply.WhichOneof("kind") != "response" or reply.response.id != request.id:
                continue  # an event, or an answer to another request
            result = reply.response.WhichOneof("result")
            if result == "error":
                raise RelayError(self.pb, reply.response.error)
            return getattr(reply.response, result)


SAMPLE_OFFER = """v=0
o=alice-desk 2890844526 2890844526 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 49170 RTP/AVP 0 8 101
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
"""

SAMPLE_ANSWER = """v=0
o=carrier 1 1 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 51372 RTP/AVP 0 101
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=sendrecv
"""

SAMPLE_B_OFFER = """v=0
o=alice-mobile 7 7 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 50000 RTP/AVP 8 0 96
a=rtpmap:96 telephone-event/8000
a=rtcp-mux
a=sendrecv
"""


def read_or(path, default):
    if path is None:
        return default
    with open(path, encoding="utf-8") as f:
        return f.read()


def demo(client, pb, args):
    aor = "sip:alice@example.com"
    gruu_a = "sip:alice@example.com;gr=urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
    gruu_b = "sip:alice@example.com;gr=urn:uuid:a7b8c9d0-1e2f-4a5b-8c6d-7e8f9a0b1c2d"
    call_id = args.call_id

    # 1. INVITE from Alice's desk phone: anchor the call, forward the offer.
    created = client.call(
        "create_session",
        pb.CreateSessionRequest(
            call_id=call_id,
            from_tag="alice-tag",
            aor=aor,
            gruu=gruu_a,
            sdp=read_or(args.offer, SAMPLE_OFFER),
        ),
    )
    print(f"session {created.session} created; offer for the callee:")
    print(created.sdp)

    # 2. 200 OK from the callee: forward its answer to the desk phone.
    updated = client.call(
        "update_session",
        pb.UpdateSessionRequest(
            session=pb.SessionRef(id=created.session),
            to_tag="callee-tag",
            sdp=read_or(args.answer, SAMPLE_ANSWER),
        ),
    )
    print("answer for the caller:")
    print(updated.sdp)

    # 3. The registrar's 200 OK to Alice's mobile, Contact as it carries it.
    contact = (
        '<sip:alice@127.0.0.1:5070;transport=udp>;expires=3600;'
        '+sip.instance="<urn:uuid:a7b8c9d0-1e2f-4a5b-8c6d-7e8f9a0b1c2d>";'
        f'pub-gruu="{gruu_b}"'
    )
    client.call(
        "register_device",
        pb.RegisterDeviceRequest(aor=aor, gruu=contact, expires=3600),
    )

    # 4. INVITE with Replaces from the mobile. The proxy must have
    #    authenticated it (digest) first: a GRUU is not a credential.
    transfer = client.call(
        "transfer",
        pb.TransferRequest(
            replaces=f"{call_id};to-tag=alice-tag;from-tag=callee-tag",
            gruu=f'"Alice" <{gruu_b}>;+sip.instance="<urn:uuid:a7b8c9d0-1e2f-4a5b-8c6d-7e8f9a0b1c2d>"',
            sdp=read_or(args.b_offer, SAMPLE_B_OFFER),
        ),
    )
    print("answer for the mobile's 200 OK:")
    print(transfer.sdp)

    # 5. BYE: end the call and read its final statistics.
    deleted = client.call(
        "delete_session", pb.DeleteSessionRequest(session=pb.SessionRef(id=created.session))
    )
    info = deleted.session
    print(f"session {info.session} deleted ({len(info.streams)} stream(s))")
    print(
        json.dumps(
            {
                "session": created.session,
                "offer_to_callee": created.sdp,
                "answer_to_caller": updated.sdp,
                "answer_to_new_device": transfer.sdp,
                "new_device_relay": transfer.streams[0].user.rtp,
                "deleted": info.session,
            }
        )
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--control",
        default=os.environ.get("BATON_CONTROL", "tcp:127.0.0.1:7120"),
        help="tcp:HOST:PORT or unix:PATH",
    )
    parser.add_argument("--token", default=os.environ.get("BATON_CONTROL_TOKEN"))
    sub = parser.add_subparsers(dest="command", required=True)
    walk = sub.add_parser("demo", help="create, answer, transfer and delete one call")
    walk.add_argument("--call-id", default="py-demo-1@example.com")
    walk.add_argument("--offer", help="the caller's SDP offer (file)")
    walk.add_argument("--answer", help="the callee's SDP answer (file)")
    walk.add_argument("--b-offer", help="the new device's SDP offer (file)")
    sub.add_parser("ping", help="check that the relay answers")
    args = parser.parse_args()

    pb = load_messages()
    client = Client(pb, args.control, args.token)
    try:
        if args.command == "ping":
            print(client.call("ping", pb.PingRequest()).version)
        else:
            demo(client, pb, args)
    except RelayError as e:
        sys.exit(f"relay refused: {e}")


if __name__ == "__main__":
    main()
