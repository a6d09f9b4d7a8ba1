//! Nanoseconds per packet of the relay's per-packet logic, without sockets:
//! the stream state machine (parse, source check, route, in-place rewrite)
//! for a first source passing through and for a switched source being
//! rewritten, the continuity engine alone, and RTCP translation of a
//! compound SR + SDES after a switch.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use baton_relay::continuity::Continuity;
use baton_relay::rtcp_translate::{self, RtcpState};
use baton_relay::rtp::RtpView;
use baton_relay::stream::{Component, FIRST_USER_LEG, LegConfig, PayloadMap, Stream, StreamConfig};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn rtp(buf: &mut [u8], seq: u16, ts: u32, ssrc: u32) -> usize {
    buf[0] = 0x80;
    buf[1] = 0;
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&ts.to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
    buf[12..172].fill(0xd5);
    172
}

fn stream(now: Instant) -> Stream {
    let leg = |peer: &str| LegConfig {
        rtcp_mux: true,
        peer_rtp: peer.parse().ok(),
        peer_rtcp: None,
    };
    Stream::new(
        now,
        StreamConfig {
            learning_window: Duration::from_secs(3),
            relearn: false,
            asymmetric: false,
        },
        leg("10.0.0.1:4000"),
        leg("10.0.0.2:5000"),
        &[(0, 8000), (101, 8000)],
        Some(101),
    )
}

fn packet_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("stream");
    group.throughput(Throughput::Elements(1));
    let t0 = Instant::now();
    let from_a: SocketAddr = "10.0.0.1:4000".parse().expect("addr");
    let from_b: SocketAddr = "10.0.0.3:6000".parse().expect("addr");
    let mut buf = [0u8; 2048];

    let mut s = stream(t0);
    let mut seq = 0u16;
    group.bench_function("on_packet: first source, pass-through", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let len = rtp(&mut buf, seq, u32::from(seq) * 160, 0xA);
            black_box(s.on_packet(t0, FIRST_USER_LEG, Component::Rtp, from_a, &mut buf, len))
        })
    });

    let mut s = stream(t0);
    let len = rtp(&mut buf, 1, 0, 0xA);
    s.on_packet(t0, FIRST_USER_LEG, Component::Rtp, from_a, &mut buf, len);
    let pending = LegConfig {
        rtcp_mux: true,
        peer_rtp: Some(from_b),
        peer_rtcp: None,
    };
    let leg_b = s
        .add_pending(t0, pending, PayloadMap::identity(Some(101)))
        .expect("pending");
    s.switch(t0);
    let mut seq = 0u16;
    group.bench_function("on_packet: after a switch, rewritten", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let len = rtp(&mut buf, seq, u32::from(seq) * 160, 0xB);
            black_box(s.on_packet(t0, leg_b, Component::Rtp, from_b, &mut buf, len))
        })
    });

    let mut continuity = Continuity::default();
    let mut seq = 0u16;
    group.bench_function("continuity: rewrite", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let len = rtp(&mut buf, seq, u32::from(seq) * 160, 0xB);
            let mut view = RtpView::new_checked(&mut buf[..len]).expect("rtp");
            black_box(continuity.rewrite(t0, 1, &mut view, 8000).ok())
        })
    });
    group.finish();
}

fn rtcp(c: &mut Criterion) {
    use rtcp::packet::Packet;
    use rtcp::source_description::{
        SdesType, SourceDescription, SourceDescriptionChunk, SourceDescriptionItem,
    };
    let t0 = Instant::now();
    let mut continuity = Continuity::default();
    let mut buf = [0u8; 2048];
    for (leg, ssrc) in [(0, 0xA), (1, 0xB)] {
        let len = rtp(&mut buf, 1, 0, ssrc);
        let mut view = RtpView::new_checked(&mut buf[..len]).expect("rtp");
        continuity.rewrite(t0, leg, &mut view, 8000).expect("sent");
    }
    let sr = rtcp::sender_report::SenderReport {
        ssrc: 0xB,
        ..Default::default()
    };
    let sdes = SourceDescription {
        chunks: vec![SourceDescriptionChunk {
            source: 0xB,
            items: vec![SourceDescriptionItem {
                sdes_type: SdesType::SdesCname,
                text: bytes::Bytes::from_static(b"device-b@example.com"),
            }],
        }],
    };
    let packets: Vec<Box<dyn Packet + Send + Sync>> = vec![Box::new(sr), Box::new(sdes)];
    let compound = rtcp::packet::marshal(&packets).expect("marshal");
    let mut state = RtcpState::default();
    c.bench_function("rtcp: translate SR+SDES toward the remote", |b| {
        b.iter(|| {
            buf[..compound.len()].copy_from_slice(&compound);
            black_box(
                rtcp_translate::toward_remote(&mut buf, compound.len(), &continuity, &mut state)
                    .ok(),
            )
        })
    });
}

criterion_group!(benches, packet_path, rtcp);
criterion_main!(benches);
