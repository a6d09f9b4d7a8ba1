//! The per-stream state machine on hostile datagrams: RTP parsing, source
//! checks, in-place rewriting and RTCP translation, before and after a
//! switch to a new device. Nothing may panic, and a forwarded datagram
//! never grows beyond the buffer.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use baton_relay::stream::{Component, LegConfig, PayloadMap, Stream, StreamConfig, Verdict};
use libfuzzer_sys::fuzz_target;

const SOURCES: [&str; 4] = [
    "10.0.0.1:4000",
    "10.0.0.2:5000",
    "10.0.0.3:6000",
    "10.6.6.6:6666",
];

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let addr = |i: usize| SOURCES[i % SOURCES.len()].parse::<SocketAddr>().ok();
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let leg = |peer: Option<SocketAddr>, mux: bool| LegConfig {
        rtcp_mux: mux,
        peer_rtp: peer,
        peer_rtcp: None,
        peer_ip: None,
    };
    let mut stream = Stream::new(
        t0,
        StreamConfig {
            learning_window: Duration::from_secs(3),
            relearn: flags & 1 != 0,
            asymmetric: flags & 2 != 0,
        },
        leg(if flags & 4 != 0 { addr(0) } else { None }, flags & 8 != 0),
        leg(addr(1), flags & 8 != 0),
        &[(0, 8000), (8, 8000), (101, 8000), (96, 48000)],
        Some(101),
    );
    if flags & 16 != 0 {
        stream.add_pending(
            t0,
            leg(if flags & 32 != 0 { addr(2) } else { None }, false),
            PayloadMap::from_pairs(&[(0, 0), (96, 101)], Some(96)),
        );
    }
    let mut step = 0u64;
    while rest.len() >= 3 {
        let (head, tail) = rest.split_at(3);
        let [what, source, len] = [head[0], head[1], head[2]];
        let len = usize::from(len).min(tail.len());
        let (packet, tail) = tail.split_at(len);
        rest = tail;
        step += 1;
        let now = t0 + Duration::from_millis(step * 20);
        if what & 0x80 != 0 {
            stream.switch(now);
        }
        let Some(from) = addr(usize::from(source)) else {
            return;
        };
        let leg_id = usize::from(what & 3);
        let component = if what & 4 != 0 {
            Component::Rtcp
        } else {
            Component::Rtp
        };
        let mut buf = [0u8; 2048];
        buf[..packet.len()].copy_from_slice(packet);
        let outcome = stream.on_packet(now, leg_id, component, from, &mut buf, packet.len());
        if let Verdict::Forward { len, .. } = outcome.verdict {
            assert!(len <= buf.len());
        }
        if what & 0x40 != 0 {
            stream.tick(now);
        }
    }
});
