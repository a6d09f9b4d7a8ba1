#!/usr/bin/env python3
"""Two T.38 fax terminals sending one page to each other through a relay.

Debian packages no T.38-capable SIP phone, but it packages spandsp
(libspandsp2), the T.30/T.38 engine Asterisk and FreeSWITCH fax with. This
script runs two of its T.38 terminals, a sender and a receiver, each on its
own UDP socket, and carries their IFP packets in UDPTL (T.38 clause 9.1,
with one redundant IFP per packet as gateways send them). The caller tells
it where to send: normally the relay's ports for each side.

Protocol on stdin/stdout (one JSON object per line):
  out: {"sender": PORT, "receiver": PORT}           the two local ports
  in:  {"sender_to": "IP:PORT", "receiver_to": "IP:PORT"}
  out: {"sender": {...}, "receiver": {...}, "image_equal": bool, ...}

The fax runs on a virtual clock (20 ms of fax time per step, the sockets
polled for up to 2 ms between steps) so it ends in seconds, and it gives up
after 180 s of fax time.
"""

import ctypes
import ctypes.util
import json
import os
import select
import socket
import struct
import sys
import tempfile

SAMPLES_PER_STEP = 160  # 20 ms at 8 kHz
MAX_STEPS = 180 * 50
WIDTH = 1728  # A4 at R8 (ITU-T T.4)
LENGTH = 240  # rows at 98 lines/inch: a short page


def load(name, soname):
    path = ctypes.util.find_library(name) or soname
    return ctypes.CDLL(path)


spandsp = load("spandsp", "libspandsp.so.2")
libtiff = load("tiff", "libtiff.so.6")

VOIDP = ctypes.c_void_p
for fn in (
    "t38_terminal_init",
    "t38_terminal_get_t30_state",
    "t38_terminal_get_t38_core_state",
):
    getattr(spandsp, fn).restype = VOIDP
spandsp.t38_terminal_get_t30_state.argtypes = [VOIDP]
spandsp.t38_terminal_get_t38_core_state.argtypes = [VOIDP]
spandsp.t38_terminal_send_timeout.argtypes = [VOIDP, ctypes.c_int]
spandsp.t38_core_rx_ifp_packet.argtypes = [VOIDP, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint16]
spandsp.t30_set_tx_file.argtypes = [VOIDP, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
spandsp.t30_set_rx_file.argtypes = [VOIDP, ctypes.c_char_p, ctypes.c_int]
spandsp.t30_set_tx_ident.argtypes = [VOIDP, ctypes.c_char_p]
spandsp.t30_set_ecm_capability.argtypes = [VOIDP, ctypes.c_int]
spandsp.t30_set_phase_e_handler.argtypes = [VOIDP, VOIDP, VOIDP]
spandsp.t30_get_transfer_statistics.argtypes = [VOIDP, VOIDP]
spandsp.t30_completion_code_to_str.restype = ctypes.c_char_p

TX_HANDLER = ctypes.CFUNCTYPE(
    ctypes.c_int, VOIDP, VOIDP, ctypes.POINTER(ctypes.c_uint8), ctypes.c_int, ctypes.c_int
)
PHASE_E_HANDLER = ctypes.CFUNCTYPE(None, VOIDP, VOIDP, ctypes.c_int)
spandsp.t38_terminal_init.argtypes = [VOIDP, ctypes.c_int, TX_HANDLER, VOIDP]

libtiff.TIFFOpen.restype = VOIDP
libtiff.TIFFOpen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libtiff.TIFFReadScanline.argtypes = [VOIDP, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint16]
libtiff.TIFFClose.argtypes = [VOIDP]
libtiff.TIFFScanlineSize.restype = ctypes.c_long
libtiff.TIFFScanlineSize.argtypes = [VOIDP]


class T30Stats(ctypes.Structure):
    """spandsp 0.0.6's t30_stats_t."""

    _fields_ = [
        (name, ctypes.c_int)
        for name in (
            "bit_rate",
            "error_correcting_mode",
            "pages_tx",
            "pages_rx",
            "pages_in_file",
            "x_resolution",
            "y_resolution",
            "width",
            "length",
            "image_size",
            "encoding",
            "bad_rows",
            "longest_bad_row_run",
            "error_correcting_mode_retries",
            "current_status",
        )
    ]


def page_rows():
    """The page: a frame, bars of several widths and a checkerboard, so the
    run lengths T.4/T.6 code are of many sizes."""
    row_bytes = WIDTH // 8
    rows = []
    for y in range(LENGTH):
        row = bytearray(row_bytes)
        if y < 4 or y >= LENGTH - 4:
            row[:] = b"\xff" * row_bytes
        else:
            row[0] |= 0xF0
            row[-1] |= 0x0F
            if 20 <= y < 120:
                for x in range(8, row_bytes - 8):
                    row[x] = 0xFF if (x // (1 + y % 7)) % 2 else 0x00
            elif 140 <= y < 220:
                for x in range(8, row_bytes - 8):
                    row[x] = 0xFF if ((x // 4) + (y // 32)) % 2 else 0x00
        rows.append(bytes(row))
    return rows


def write_tiff(path, rows):
    """An uncompressed bilevel TIFF (min-is-white) at 204 x 98 dpi."""
    data = b"".join(rows)
    entries = []

    def entry(tag, kind, count, value):
        entries.append((tag, kind, count, value))

    header_size = 8
    data_offset = header_size
    ifd_offset = data_offset + len(data)
    n = 13
    extra_offset = ifd_offset + 2 + n * 12 + 4
    xres_offset, yres_offset = extra_offset, extra_offset + 8
    entry(256, 4, 1, WIDTH)  # ImageWidth
    entry(257, 4, 1, len(rows))  # ImageLength
    entry(258, 3, 1, 1)  # BitsPerSample
    entry(259, 3, 1, 1)  # Compression: none
    entry(262, 3, 1, 0)  # Photometric: min-is-white
    entry(266, 3, 1, 1)  # FillOrder: MSB first
    entry(273, 4, 1, data_offset)  # StripOffsets
    entry(277, 3, 1, 1)  # SamplesPerPixel
    entry(278, 4, 1, len(rows))  # RowsPerStrip
    entry(279, 4, 1, len(data))  # StripByteCounts
    entry(282, 5, 1, xres_offset)  # XResolution
    entry(283, 5, 1, yres_offset)  # YResolution
    entry(296, 3, 1, 2)  # ResolutionUnit: inch
    assert len(entries) == n
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_offset))
    out += data
    out += struct.pack("<H", n)
    for tag, kind, count, value in entries:
        if kind == 3:
            out += struct.pack("<HHIHH", tag, kind, count, value, 0)
        else:
            out += struct.pack("<HHII", tag, kind, count, value)
    out += struct.pack("<I", 0)
    out += struct.pack("<II", 204, 1) + struct.pack("<II", 98, 1)
    with open(path, "wb") as f:
        f.write(out)


def read_tiff_rows(path):
    """The first page of a TIFF, decoded by libtiff, one bytes per row."""
    tif = libtiff.TIFFOpen(path.encode(), b"r")
    if not tif:
        return None
    length = ctypes.c_uint32()
    libtiff.TIFFGetField(VOIDP(tif), ctypes.c_uint32(257), ctypes.byref(length))
    size = libtiff.TIFFScanlineSize(tif)
    buf = ctypes.create_string_buffer(size)
    rows = []
    for y in range(length.value):
        if libtiff.TIFFReadScanline(tif, buf, y, 0) < 0:
            break
        rows.append(buf.raw[:size])
    libtiff.TIFFClose(tif)
    return rows


def udptl(seq, primary, previous):
    """A UDPTL packet: sequence number, the primary IFP and the one before
    it as a redundant secondary IFP (aligned PER, lengths under 128)."""

    def open_type(ifp):
        assert len(ifp) < 0x80
        return bytes([len(ifp)]) + ifp

    packet = struct.pack(">H", seq) + open_type(primary) + b"\x00"
    packet += bytes([len(previous)]) + b"".join(open_type(p) for p in previous)
    return packet


def parse_udptl(packet):
    """(sequence number, primary IFP), or None for what is no UDPTL."""
    if len(packet) < 3:
        return None
    seq = struct.unpack(">H", packet[:2])[0]
    length = packet[2]
    if length & 0x80:
        return None
    ifp = packet[3 : 3 + length]
    if len(ifp) != length:
        return None
    return seq, ifp


class Terminal:
    def __init__(self, name, calling, path):
        self.name = name
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.to = None
        self.seq = 0
        self.previous = []
        self.sent = 0
        self.received = 0
        self.malformed = 0
        self.completion = None
        self.tx = TX_HANDLER(self.on_ifp)
        self.phase_e = PHASE_E_HANDLER(self.on_phase_e)
        self.state = spandsp.t38_terminal_init(None, 1 if calling else 0, self.tx, None)
        self.t30 = spandsp.t38_terminal_get_t30_state(self.state)
        self.core = spandsp.t38_terminal_get_t38_core_state(self.state)
        spandsp.t30_set_tx_ident(self.t30, name.encode())
        spandsp.t30_set_ecm_capability(self.t30, 1)
        spandsp.t30_set_phase_e_handler(
            self.t30, ctypes.cast(self.phase_e, VOIDP), None
        )
        if calling:
            spandsp.t30_set_tx_file(self.t30, path.encode(), -1, -1)
        else:
            spandsp.t30_set_rx_file(self.t30, path.encode(), -1)

    def on_ifp(self, _core, _user, buf, length, _count):
        if self.to is None:
            return -1
        ifp = ctypes.string_at(buf, length)
        self.sock.sendto(udptl(self.seq, ifp, self.previous), self.to)
        self.previous = [ifp]
        self.seq = (self.seq + 1) & 0xFFFF
        self.sent += 1
        return 0

    def on_phase_e(self, _t30, _user, completion):
        self.completion = completion

    def step(self):
        spandsp.t38_terminal_send_timeout(self.state, SAMPLES_PER_STEP)

    def drain(self):
        while True:
            try:
                packet, _ = self.sock.recvfrom(2048)
            except BlockingIOError:
                return
            parsed = parse_udptl(packet)
            if parsed is None:
                self.malformed += 1
                continue
            self.received += 1
            seq, ifp = parsed
            spandsp.t38_core_rx_ifp_packet(self.core, ifp, len(ifp), seq)

    def report(self):
        stats = T30Stats()
        spandsp.t30_get_transfer_statistics(self.t30, ctypes.byref(stats))
        code = self.completion
        return {
            "completion": code,
            "completion_text": (
                spandsp.t30_completion_code_to_str(code).decode() if code is not None else None
            ),
            "pages_tx": stats.pages_tx,
            "pages_rx": stats.pages_rx,
            "bit_rate": stats.bit_rate,
            "ecm": bool(stats.error_correcting_mode),
            "bad_rows": stats.bad_rows,
            "datagrams_sent": self.sent,
            "datagrams_received": self.received,
            "malformed": self.malformed,
        }


def main():
    workdir = tempfile.mkdtemp(prefix="baton-fax-")
    page, received = os.path.join(workdir, "page.tif"), os.path.join(workdir, "rx.tif")
    rows = page_rows()
    write_tiff(page, rows)
    sender = Terminal("baton sender", True, page)
    receiver = Terminal("baton receiver", False, received)
    print(
        json.dumps(
            {"sender": sender.sock.getsockname()[1], "receiver": receiver.sock.getsockname()[1]}
        ),
        flush=True,
    )
    targets = json.loads(sys.stdin.readline())

    def address(text):
        host, port = text.rsplit(":", 1)
        return host.strip("[]"), int(port)

    sender.to = address(targets["sender_to"])
    receiver.to = address(targets["receiver_to"])
    steps = 0
    while steps < MAX_STEPS and (sender.completion is None or receiver.completion is None):
        steps += 1
        sender.step()
        receiver.step()
        select.select([sender.sock, receiver.sock], [], [], 0.002)
        for t in (sender, receiver):
            t.drain()
    got = read_tiff_rows(received) if os.path.exists(received) else None
    print(
        json.dumps(
            {
                "fax_seconds": steps * SAMPLES_PER_STEP / 8000,
                "sender": sender.report(),
                "receiver": receiver.report(),
                "rows_sent": len(rows),
                "rows_received": len(got) if got is not None else None,
                "image_equal": got == rows,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
