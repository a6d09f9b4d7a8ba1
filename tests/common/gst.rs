//! GStreamer media peers for tests: video devices with real encoders
//! behind `rtpbin` (a PLI or FIR from the relay becomes a key-unit request
//! to the encoder), a shim between each GStreamer process and the relay
//! that records what the relay sent, and that record written as a pcap for
//! tshark's own RTP stream analysis.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command as Process, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The video payload type the devices send and the remote expects.
pub const PT: u8 = 96;

/// The codec under test and its GStreamer elements.
#[derive(Clone, Copy)]
pub enum Codec {
    Vp8,
    H264,
}

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Self::Vp8 => "VP8",
            Self::H264 => "H264",
        }
    }

    pub fn elements(self) -> [&'static str; 4] {
        match self {
            Self::Vp8 => ["vp8enc", "vp8dec", "rtpvp8pay", "rtpvp8depay"],
            Self::H264 => ["openh264enc", "openh264dec", "rtph264pay", "rtph264depay"],
        }
    }

    /// Encoder and payloader for device `which` (0 or 1): keyframes only
    /// when asked, and (VP8) a picture ID range of its own, so the test
    /// can tell the devices apart in the outward stream.
    pub fn sender(self, which: u16) -> String {
        match self {
            Self::Vp8 => format!(
                "vp8enc deadline=1 cpu-used=8 keyframe-max-dist=100000 ! \
                 rtpvp8pay pt={PT} picture-id-mode=15-bit picture-id-offset={}",
                which * 16_000
            ),
            Self::H264 => format!(
                "openh264enc gop-size=100000 complexity=low ! \
                 rtph264pay pt={PT} config-interval=-1 aggregate-mode=zero-latency"
            ),
        }
    }

    pub fn receiver(self) -> &'static str {
        match self {
            Self::Vp8 => "rtpvp8depay ! vp8dec",
            Self::H264 => "rtph264depay ! h264parse ! openh264dec",
        }
    }

    /// Whether an RTP payload starts a keyframe, read with the relay's own
    /// rule (unit-tested on the RFCs' layouts); the picture IDs (VP8) and
    /// the decoder's clean run are the independent checks.
    pub fn starts_keyframe(self, payload: &[u8]) -> bool {
        baton_relay::core::keyframe::starts_keyframe(
            match self {
                Self::Vp8 => baton_relay::core::keyframe::PayloadFormat::Vp8,
                Self::H264 => baton_relay::core::keyframe::PayloadFormat::H264,
            },
            payload,
        )
    }
}

/// Whether GStreamer has the codec's elements; without them the test fails
/// under `BATON_REQUIRE_GSTREAMER=1` and skips otherwise.
pub fn gstreamer_has(codec: Codec) -> bool {
    let present = codec
        .elements()
        .iter()
        .chain(&["rtpbin", "videotestsrc", "h264parse"])
        .all(|element| super::tool_answers("gst-inspect-1.0", element));
    if !present {
        assert!(
            std::env::var_os("BATON_REQUIRE_GSTREAMER").is_none(),
            "BATON_REQUIRE_GSTREAMER is set but GStreamer lacks {:?} (gstreamer1.0-plugins-good, -plugins-bad)",
            codec.elements()
        );
        eprintln!("SKIPPED: GStreamer {} elements", codec.name());
    }
    present
}

/// One packet the remote's network saw.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub at: Instant,
    pub seq: u16,
    pub ts: u32,
    pub ssrc: u32,
    pub keyframe: bool,
    /// VP8 picture ID (tells the devices apart), if any.
    pub picture: Option<u16>,
}

pub fn vp8_picture_id(payload: &[u8]) -> Option<u16> {
    let (&first, rest) = payload.split_first()?;
    if first & 0x80 == 0 {
        return None;
    }
    let (&ext, rest) = rest.split_first()?;
    if ext & 0x80 == 0 {
        return None;
    }
    match rest {
        [high, low, ..] if high & 0x80 != 0 => Some(u16::from_be_bytes([high & 0x7f, *low])),
        [id, ..] => Some(u16::from(*id)),
        [] => None,
    }
}

/// The test's place between one GStreamer process and the relay: a socket
/// the relay sees as the party (rtcp-mux), forwarding the relay's RTP and
/// RTCP to GStreamer's two ports and GStreamer's to the relay.
pub struct Shim {
    /// The address the relay is told (the party's).
    pub addr: SocketAddr,
    /// Where GStreamer sends its RTP and its RTCP.
    pub gst_rtp_in: u16,
    pub gst_rtcp_in: u16,
    /// The relay's address for this party (changes at a transfer).
    pub relay: Arc<Mutex<Option<SocketAddr>>>,
    /// RTP from the relay, as seen.
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// RTP from the relay as it arrived (time, source, datagram), for
    /// [`write_pcap`].
    pub captured: Arc<Mutex<Vec<Captured>>>,
    /// Datagrams GStreamer has sent (its pipeline is running).
    pub from_gst: Arc<AtomicU64>,
    pub stop: Arc<AtomicBool>,
}

impl Shim {
    /// A shim delivering to GStreamer on `gst_rtp` and `gst_rtcp`.
    pub fn new(codec: Codec, gst_rtp: u16, gst_rtcp: u16) -> Self {
        let bind = || {
            let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .expect("timeout");
            Arc::new(socket)
        };
        let (outer, rtp_in, rtcp_in) = (bind(), bind(), bind());
        let shim = Self {
            addr: outer.local_addr().expect("addr"),
            gst_rtp_in: rtp_in.local_addr().expect("addr").port(),
            gst_rtcp_in: rtcp_in.local_addr().expect("addr").port(),
            relay: Arc::default(),
            seen: Arc::default(),
            captured: Arc::default(),
            from_gst: Arc::default(),
            stop: Arc::default(),
        };
        // The relay → GStreamer, RTCP told apart by its packet type.
        let (from_relay, seen, captured, stop) = (
            Arc::clone(&outer),
            Arc::clone(&shim.seen),
            Arc::clone(&shim.captured),
            Arc::clone(&shim.stop),
        );
        let to = shim.addr;
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                let Ok((len, from)) = from_relay.recv_from(&mut buf) else {
                    continue;
                };
                let packet = &buf[..len];
                let rtcp = len >= 2 && (192..=223).contains(&packet[1]);
                let port = if rtcp { gst_rtcp } else { gst_rtp };
                if !rtcp && len > 12 {
                    let payload = &packet[12..];
                    seen.lock().expect("lock").push(Seen {
                        at: Instant::now(),
                        seq: u16::from_be_bytes([packet[2], packet[3]]),
                        ts: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
                        ssrc: u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
                        keyframe: codec.starts_keyframe(payload),
                        picture: vp8_picture_id(payload),
                    });
                    captured.lock().expect("lock").push(Captured {
                        at: SystemTime::now(),
                        from,
                        to,
                        datagram: packet.to_vec(),
                    });
                }
                let _ = from_relay.send_to(packet, ("127.0.0.1", port));
            }
        });
        // GStreamer → the relay, once the relay's address is known.
        for inner in [rtp_in, rtcp_in] {
            let (to_relay, relay, stop, count) = (
                Arc::clone(&outer),
                Arc::clone(&shim.relay),
                Arc::clone(&shim.stop),
                Arc::clone(&shim.from_gst),
            );
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, _)) = inner.recv_from(&mut buf) else {
                        continue;
                    };
                    count.fetch_add(1, Ordering::Relaxed);
                    if let Some(to) = *relay.lock().expect("lock") {
                        let _ = to_relay.send_to(&buf[..len], to);
                    }
                }
            });
        }
        shim
    }

    pub fn send_to(&self, relay: &str) {
        *self.relay.lock().expect("lock") = Some(relay.parse().expect("relay address"));
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A GStreamer process, killed when dropped.
pub struct Gst(pub Child);

impl Drop for Gst {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A device: a moving test picture at 30 fps, encoded, through `rtpbin`;
/// its messages go to `log`.
pub fn device(
    codec: Codec,
    which: u16,
    ssrc: u32,
    shim: &Shim,
    rtcp_port: u16,
    log: &std::path::Path,
) -> Gst {
    let pipeline = format!(
        "rtpbin name=rb videotestsrc is-live=true pattern=ball \
         ! video/x-raw,width=320,height=240,framerate=30/1 ! {} ! application/x-rtp,ssrc=(uint){ssrc} \
         ! rb.send_rtp_sink_0 \
         rb.send_rtp_src_0 ! udpsink host=127.0.0.1 port={} sync=false async=false \
         rb.send_rtcp_src_0 ! udpsink host=127.0.0.1 port={} sync=false async=false \
         udpsrc port={rtcp_port} ! rb.recv_rtcp_sink_0",
        codec.sender(which),
        shim.gst_rtp_in,
        shim.gst_rtcp_in,
    );
    Gst(Process::new("gst-launch-1.0")
        .arg("-q")
        .args(pipeline.split_whitespace())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("gst-launch-1.0"))
}

/// One UDP datagram as a capture holds it.
#[derive(Debug, Clone)]
pub struct Captured {
    pub at: SystemTime,
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub datagram: Vec<u8>,
}

/// Writes IPv4 datagrams as a pcap file (link type RAW, 101): an IPv4 and
/// a UDP header before each payload, as a capture on the loopback would
/// have them, so tshark reads the test's record as it reads its own.
pub fn write_pcap(path: &std::path::Path, packets: &[Captured]) {
    let mut out = Vec::new();
    // Global header: magic, version 2.4, zone, accuracy, snaplen, RAW.
    out.extend_from_slice(&0xa1b2_c3d4_u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&65_535u32.to_le_bytes());
    out.extend_from_slice(&101u32.to_le_bytes());
    for packet in packets {
        let (SocketAddr::V4(from), SocketAddr::V4(to)) = (packet.from, packet.to) else {
            panic!("IPv4 only: {packet:?}");
        };
        let udp_len = 8 + packet.datagram.len();
        let total = 20 + udp_len;
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip.extend_from_slice(&from.ip().octets());
        ip.extend_from_slice(&to.ip().octets());
        let checksum = !ip.chunks(2).fold(0u32, |sum, word| {
            let sum = sum + u32::from(u16::from_be_bytes([word[0], word[1]]));
            (sum & 0xffff) + (sum >> 16)
        }) as u16;
        ip[10..12].copy_from_slice(&checksum.to_be_bytes());
        let since = packet
            .at
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970");
        out.extend_from_slice(&(since.as_secs() as u32).to_le_bytes());
        out.extend_from_slice(&since.subsec_micros().to_le_bytes());
        out.extend_from_slice(&(total as u32).to_le_bytes());
        out.extend_from_slice(&(total as u32).to_le_bytes());
        out.extend_from_slice(&ip);
        out.extend_from_slice(&from.port().to_be_bytes());
        out.extend_from_slice(&to.port().to_be_bytes());
        out.extend_from_slice(&(udp_len as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0]); // no UDP checksum (allowed on IPv4)
        out.extend_from_slice(&packet.datagram);
    }
    std::fs::write(path, out).expect("write the pcap");
}

/// One stream of tshark's RTP stream analysis (`-z rtp,streams`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsharkStream {
    pub ssrc: u32,
    pub packets: u64,
    pub lost: i64,
    /// tshark marks a stream with a problem (sequence errors, wrong
    /// timestamps) with an `X` in its last column.
    pub problem: bool,
}

/// tshark's RTP streams in a pcap, UDP to `port` decoded as RTP; `None`
/// when tshark is not installed.
pub fn tshark_rtp_streams(pcap: &std::path::Path, port: u16) -> Option<Vec<TsharkStream>> {
    let output = Process::new("tshark")
        .args(["-n", "-q", "-r"])
        .arg(pcap)
        .args(["-d", &format!("udp.port=={port},rtp"), "-z", "rtp,streams"])
        .output()
        .ok()?;
    assert!(
        output.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let streams: Vec<TsharkStream> = text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let ssrc_at = fields.iter().position(|f| f.starts_with("0x"))?;
            let ssrc = u32::from_str_radix(&fields[ssrc_at][2..], 16).ok()?;
            // SSRC, payload name, packets, lost (then its percentage).
            let packets = fields.get(ssrc_at + 2)?.parse().ok()?;
            let lost = fields.get(ssrc_at + 3)?.parse().ok()?;
            Some(TsharkStream {
                ssrc,
                packets,
                lost,
                problem: fields.last() == Some(&"X"),
            })
        })
        .collect();
    eprintln!("tshark -z rtp,streams:\n{text}");
    Some(streams)
}

/// Whether tshark is installed; required where `BATON_REQUIRE_TSHARK` is
/// set (CI installs it).
pub fn tshark_present() -> bool {
    let present = super::tool_answers("tshark", "--version");
    assert!(
        present || std::env::var_os("BATON_REQUIRE_TSHARK").is_none(),
        "BATON_REQUIRE_TSHARK is set but tshark is missing (apt-get install tshark)"
    );
    present
}
