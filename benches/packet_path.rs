//! Nanoseconds per packet of the relay's per-packet logic, without sockets:
//! the session core (parse, source check, route, in-place rewrite)
//! for a first source passing through and for a switched source being
//! rewritten, the continuity engine alone, and RTCP translation: a compound
//! SR + SDES after a switch, and adversarial compounds (the worst a peer can
//! send in one 1 500-byte datagram), beside the `rtcp` crate's parse of the
//! transport-wide CC packet that used to cost ~50 µs per datagram. The
//! SRTP group runs the same session path with SRTP legs: decrypting an SRTP
//! device's packet toward a plain remote, encrypting the remote's packet
//! toward the SRTP device, and both (SRTP on both legs).

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use baton_relay::core::continuity::{Continuity, SequenceShift};
use baton_relay::core::rtcp_translate::{self, RtcpState};
use baton_relay::core::rtp::{RtpRepr, RtpView};
use baton_relay::core::session::{PendingLeg, Session, StreamParams, SwitchMode, Timeouts};
use baton_relay::core::srtp::{MAX_OVERHEAD, MasterKey, SrtpSender, Suite};
use baton_relay::core::stream::{
    Component, LegConfig, LegCrypto, LegKeys, PayloadMap, StreamConfig,
};
use baton_relay::{LegId, SessionId, StreamIndex, TransferId};
use criterion::BatchSize;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn rtp(buf: &mut [u8], seq: u16, ts: u32, ssrc: u32) -> usize {
    RtpRepr {
        marker: false,
        payload_type: 0,
        sequence: seq,
        timestamp: ts,
        ssrc,
    }
    .emit(buf, &[0xd5; 160])
    .unwrap_or(0)
}

fn leg(peer: &str) -> LegConfig {
    LegConfig {
        rtcp_mux: true,
        peer_rtp: peer.parse().ok(),
        peer_rtcp: None,
        peer_ip: None,
        crypto: baton_relay::core::stream::LegCrypto::Plain,
        ice: None,
        dtls: None,
    }
}

fn session(now: Instant) -> Session {
    session_with(now, LegCrypto::Plain, LegCrypto::Plain)
}

fn session_with(now: Instant, device: LegCrypto, remote: LegCrypto) -> Session {
    let params = StreamParams {
        config: StreamConfig {
            learning_window: Duration::from_secs(3),
            relearn: false,
            asymmetric: false,
        },
        clock_rates: vec![(0, 8000), (101, 8000)],
        formats: Vec::new(),
        telephone_event: Some(101),
        device: LegConfig {
            crypto: device,
            ..leg("10.0.0.1:4000")
        },
        remote: LegConfig {
            crypto: remote,
            ..leg("10.0.0.2:5000")
        },
    };
    let timeouts = Timeouts {
        media: Duration::from_secs(3600),
        setup: Duration::from_secs(3600),
        hold: Duration::from_secs(3600),
    };
    Session::new(now, SessionId(1), &[params], timeouts)
}

fn packet_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("session");
    group.throughput(Throughput::Elements(1));
    let t0 = Instant::now();
    let s0 = StreamIndex(0);
    let from_a: SocketAddr = "10.0.0.1:4000".parse().expect("addr");
    let from_b: SocketAddr = "10.0.0.3:6000".parse().expect("addr");
    let mut buf = [0u8; 2048 + MAX_OVERHEAD];
    let mut fork = [0u8; 2048 + MAX_OVERHEAD];

    let mut s = session(t0);
    let mut seq = 0u16;
    group.bench_function("handle_packet: first source, pass-through", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let len = rtp(&mut buf, seq, u32::from(seq) * 160, 0xA);
            black_box(s.handle_packet(
                t0,
                s0,
                LegId::FIRST_DEVICE,
                Component::Rtp,
                from_a,
                &mut buf,
                len,
                &mut fork,
            ))
        })
    });

    let mut s = session(t0);
    let len = rtp(&mut buf, 1, 0, 0xA);
    s.handle_packet(
        t0,
        s0,
        LegId::FIRST_DEVICE,
        Component::Rtp,
        from_a,
        &mut buf,
        len,
        &mut fork,
    );
    let pending = PendingLeg {
        config: leg("10.0.0.3:6000"),
        payloads: PayloadMap::identity([0, 101], Some(101)),
    };
    let leg_b = s
        .begin_transfer(
            t0,
            TransferId(1),
            &[pending],
            SwitchMode::FirstPacket,
            Duration::from_secs(3600),
        )
        .expect("transfer")[0];
    let mut seq = 0u16;
    group.bench_function("handle_packet: after a switch, rewritten", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let len = rtp(&mut buf, seq, u32::from(seq) * 160, 0xB);
            let verdict = s.handle_packet(
                t0,
                s0,
                leg_b,
                Component::Rtp,
                from_b,
                &mut buf,
                len,
                &mut fork,
            );
            while s.poll_event().is_some() {}
            black_box(verdict)
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

/// The session path with SRTP legs (AES_CM_128_HMAC_SHA1_80): what each
/// packet costs beyond plain forwarding. The sender's encryption is done
/// in untimed setup.
fn srtp(c: &mut Criterion) {
    let mut group = c.benchmark_group("srtp");
    group.throughput(Throughput::Elements(1));
    let t0 = Instant::now();
    let s0 = StreamIndex(0);
    let key = |n: u8| MasterKey::new(Suite::AesCm128HmacSha1_80, &[n; 30]).expect("key");
    let keys = |n: u8| {
        LegCrypto::Srtp(LegKeys {
            peer: key(n),
            relay: key(n + 100),
        })
    };
    let from_a: SocketAddr = "10.0.0.1:4000".parse().expect("addr");
    let from_r: SocketAddr = "10.0.0.2:5000".parse().expect("addr");
    let mut fork = [0u8; 2048 + MAX_OVERHEAD];
    type Packet = ([u8; 2048 + MAX_OVERHEAD], usize);
    let cases: [(&str, LegCrypto, LegCrypto, bool); 3] = [
        (
            "handle_packet: SRTP device -> plain remote (decrypt)",
            keys(1),
            LegCrypto::Plain,
            true,
        ),
        (
            "handle_packet: plain remote -> SRTP device (encrypt)",
            keys(1),
            LegCrypto::Plain,
            false,
        ),
        (
            "handle_packet: SRTP device -> SRTP remote (decrypt + encrypt)",
            keys(1),
            keys(2),
            true,
        ),
    ];
    for (name, device, remote, from_device) in cases {
        let mut s = session_with(t0, device, remote);
        let mut sender = SrtpSender::new(&key(if from_device { 1 } else { 2 }));
        let mut seq = 0u16;
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || -> Packet {
                    seq = seq.wrapping_add(1);
                    let mut buf = [0u8; 2048 + MAX_OVERHEAD];
                    let mut len = rtp(&mut buf, seq, u32::from(seq) * 160, 0xA);
                    if from_device {
                        len = sender.protect_rtp(&mut buf, len).expect("protect");
                    }
                    (buf, len)
                },
                |(buf, len)| {
                    let (leg, from) = if from_device {
                        (LegId::FIRST_DEVICE, from_a)
                    } else {
                        (LegId::REMOTE, from_r)
                    };
                    black_box(s.handle_packet(
                        t0,
                        s0,
                        leg,
                        Component::Rtp,
                        from,
                        buf,
                        *len,
                        &mut fork,
                    ))
                },
                BatchSize::SmallInput,
            )
        });
    }
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
                rtcp_translate::toward_remote(
                    &mut buf,
                    compound.len(),
                    &continuity,
                    &SequenceShift::default(),
                    &mut state,
                )
                .ok(),
            )
        })
    });
}

/// 1 500-byte (or nearly) compounds built to cost the translator the most.
fn adversarial_compounds() -> Vec<(&'static str, Vec<u8>)> {
    let word = |v: u32| v.to_be_bytes();
    // 187 BYEs of one source each: every one removed.
    let mut byes = Vec::new();
    for _ in 0..187 {
        byes.extend_from_slice(&[0x81, 203, 0, 1]);
        byes.extend_from_slice(&word(0xB));
    }
    // One SDES of 31 chunks, each with a CNAME to replace and filler items.
    let mut sdes = vec![0x80 | 31, 202, 0, 0];
    for _ in 0..31 {
        sdes.extend_from_slice(&word(0xB));
        sdes.extend_from_slice(&[1, 8]);
        sdes.extend_from_slice(b"b@mobile");
        for _ in 0..8 {
            sdes.extend_from_slice(&[6, 2, b'x', b'y']);
        }
        sdes.extend_from_slice(&[0, 0]);
    }
    let words = u16::try_from(sdes.len() / 4 - 1).expect("fits");
    sdes[2..4].copy_from_slice(&words.to_be_bytes());
    // 2 RRs of 30 report blocks, each about the outward SSRC.
    let mut reports = Vec::new();
    for _ in 0..2 {
        reports.extend_from_slice(&[0x80 | 30, 201, 0, 181]);
        reports.extend_from_slice(&word(0xFACE));
        for _ in 0..30 {
            reports.extend_from_slice(&word(0xA));
            reports.extend_from_slice(&[0; 4]);
            reports.extend_from_slice(&word(70_000));
            reports.extend_from_slice(&[0; 12]);
        }
    }
    // Transport-wide congestion control feedback (RTPFB FMT 15), 48 bytes,
    // crafted: 65 528 packets announced in eight run-length chunks, deltas
    // missing (a parser that expands the runs pays for all of them).
    let mut twcc = vec![0x8f, 205, 0, 11];
    twcc.extend_from_slice(&word(0xFACE));
    twcc.extend_from_slice(&word(0xA));
    twcc.extend_from_slice(&[0, 1, 0xff, 0xf8, 0, 0, 1, 0]);
    for _ in 0..8 {
        twcc.extend_from_slice(&[0x3f, 0xff]);
    }
    twcc.extend_from_slice(&[4; 12]);
    vec![
        ("187 BYEs", byes),
        ("SDES of 31 chunks", sdes),
        ("2 RRs of 30 blocks", reports),
        ("TWCC feedback", twcc),
    ]
}

fn rtcp_adversarial(c: &mut Criterion) {
    let t0 = Instant::now();
    let mut continuity = Continuity::default();
    let mut buf = [0u8; 2048];
    for (leg, ssrc) in [(0, 0xA), (1, 0xB)] {
        let len = rtp(&mut buf, 1, 0, ssrc);
        let mut view = RtpView::new_checked(&mut buf[..len]).expect("rtp");
        continuity.rewrite(t0, leg, &mut view, 8000).expect("sent");
    }
    let mut group = c.benchmark_group("rtcp adversarial");
    for (name, compound) in adversarial_compounds() {
        assert!(compound.len() <= 1500, "{name}: {}", compound.len());
        let mut state = RtcpState::default();
        group.bench_function(format!("toward the remote: {name}"), |b| {
            b.iter(|| {
                buf[..compound.len()].copy_from_slice(&compound);
                black_box(rtcp_translate::toward_remote(
                    &mut buf,
                    compound.len(),
                    &continuity,
                    &SequenceShift::default(),
                    &mut state,
                ))
            })
        });
        group.bench_function(format!("toward the device: {name}"), |b| {
            b.iter(|| {
                buf[..compound.len()].copy_from_slice(&compound);
                black_box(rtcp_translate::toward_user(
                    &mut buf,
                    compound.len(),
                    &continuity,
                    &mut state,
                ))
            })
        });
    }
    // The baseline the issue measured: the `rtcp` crate parsing the TWCC
    // packet (what the relay did before for any RTCP toward the device).
    let (_, twcc) = adversarial_compounds().pop().expect("twcc");
    group.bench_function("baseline: rtcp crate parses TWCC feedback", |b| {
        b.iter(|| {
            let mut bytes = bytes::Bytes::copy_from_slice(&twcc);
            black_box(rtcp::packet::unmarshal(&mut bytes).is_ok())
        })
    });
    group.finish();
}

criterion_group!(benches, packet_path, srtp, rtcp, rtcp_adversarial);
criterion_main!(benches);
