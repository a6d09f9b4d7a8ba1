//! The session core on hostile datagrams and any order of control
//! commands: RTP parsing, source checks, in-place rewriting and RTCP
//! translation, before, during and after transfers (first-packet and
//! commit mode, cancels, timeouts, holds). Nothing may panic, a forwarded
//! datagram never grows beyond the buffer, and every event names a leg or
//! transfer that exists. Flags make legs SRTP; a datagram may be sent as
//! valid SRTP under its leg's key (so the decrypt paths run, not only the
//! authentication failures).
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use baton_relay::core::session::{
    PendingLeg, Session, SessionEvent, SessionUpdate, StreamParams, SwitchMode, Timeouts,
};
use baton_relay::core::keyframe::PayloadFormat;
use baton_relay::core::srtp::{MAX_OVERHEAD, MasterKey, SrtpSender, Suite};
use baton_relay::core::stream::{
    Component, LegConfig, LegCrypto, LegKeys, PayloadMap, StreamConfig, Verdict,
};
use baton_relay::{LegId, SessionId, StreamIndex, TransferId};
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
    let key = |suite: Suite, n: u8| {
        MasterKey::new(suite, &[n; 46][..suite.master_len()]).expect("length")
    };
    // Device-side legs send with key 1, the remote with key 2.
    let suites = [Suite::AesCm128HmacSha1_32, Suite::AeadAes128Gcm];
    let crypto = |on: bool, side: usize| {
        if on {
            LegCrypto::Srtp(LegKeys {
                peer: key(suites[side], 1 + side as u8),
                relay: key(suites[side], 10 + side as u8),
            })
        } else {
            LegCrypto::Plain
        }
    };
    let mut senders = [0usize, 1].map(|side| SrtpSender::new(&key(suites[side], 1 + side as u8)));
    let leg = |peer: Option<SocketAddr>, mux: bool| LegConfig {
        rtcp_mux: mux,
        peer_rtp: peer,
        peer_rtcp: None,
        peer_ip: None,
        crypto: LegCrypto::Plain,
        ice: None,
        dtls: None,
    };
    let params = StreamParams {
        config: StreamConfig {
            learning_window: Duration::from_secs(3),
            relearn: flags & 1 != 0,
            asymmetric: flags & 2 != 0,
        },
        // Audio, and video with its repair format: the keyframe wait at a
        // switch and the RTX repair stream run too.
        clock_rates: vec![
            (0, 8000),
            (8, 8000),
            (101, 8000),
            (96, 48000),
            (97, 90000),
            (98, 90000),
        ],
        telephone_event: Some(101),
        formats: vec![(97, PayloadFormat::Vp8), (98, PayloadFormat::Rtx)],
        device: LegConfig {
            crypto: crypto(flags & 0x10 != 0, 0),
            ..leg(if flags & 4 != 0 { addr(0) } else { None }, flags & 8 != 0)
        },
        remote: LegConfig {
            crypto: crypto(flags & 0x20 != 0, 1),
            ..leg(addr(1), flags & 8 != 0)
        },
    };
    let streams = 1 + usize::from(flags >> 7);
    let timeouts = Timeouts {
        media: Duration::from_secs(5),
        setup: Duration::from_secs(10),
        hold: Duration::from_secs(20),
    };
    let mut session = Session::new(t0, SessionId(1), &vec![params; streams], timeouts);
    let mut next_transfer = 0u64;
    let mut now = t0;
    while rest.len() >= 3 {
        let (head, tail) = rest.split_at(3);
        let [what, source, len] = [head[0], head[1], head[2]];
        now += Duration::from_millis(u64::from(what >> 4) * 10);
        match what & 0x0f {
            0x0 => {
                next_transfer += 1;
                let pending = PendingLeg {
                    config: LegConfig {
                        peer_ip: addr(usize::from(source)).map(|a| a.ip()),
                        crypto: crypto(source & 0x80 != 0, 0),
                        ..leg(
                            if source & 0x10 != 0 { addr(2) } else { None },
                            source & 0x20 != 0,
                        )
                    },
                    payloads: PayloadMap::from_pairs(&[(0, 0), (96, 101), (97, 97), (98, 98)], Some(96)),
                };
                let mode = if source & 0x40 != 0 {
                    SwitchMode::Commit
                } else {
                    SwitchMode::FirstPacket
                };
                let _ = session.begin_transfer(
                    now,
                    TransferId(next_transfer),
                    &vec![pending; streams],
                    mode,
                    Duration::from_secs(2),
                );
            }
            0x1 => {
                let _ = session.commit(now, TransferId(u64::from(source & 3)));
            }
            0x2 => {
                let _ = session.cancel((source & 1 != 0).then_some(TransferId(next_transfer)));
            }
            0x3 => {
                let _ = session.update(
                    now,
                    &SessionUpdate {
                        held: Some(source & 1 != 0),
                        ..SessionUpdate::default()
                    },
                );
            }
            0x4 => session.handle_timeout(now),
            _ => {
                let len = usize::from(len).min(tail.len());
                let (packet, tail) = tail.split_at(len);
                rest = tail;
                let Some(from) = addr(usize::from(source)) else {
                    return;
                };
                let leg_id = LegId::new(usize::from(what & 3)).unwrap_or(LegId::REMOTE);
                let component = if what & 4 != 0 {
                    Component::Rtcp
                } else {
                    Component::Rtp
                };
                let stream = StreamIndex(usize::from(source >> 7) % streams);
                let mut buf = [0u8; 2048 + MAX_OVERHEAD];
                let mut fork = [0u8; 2048 + MAX_OVERHEAD];
                buf[..packet.len()].copy_from_slice(packet);
                let mut len = len;
                if what & 8 != 0 {
                    // As the leg's peer would send it, under its key.
                    let side = usize::from(leg_id == LegId::REMOTE);
                    let sealed = match component {
                        Component::Rtp => senders[side].protect_rtp(&mut buf, len),
                        Component::Rtcp => senders[side].protect_rtcp(&mut buf, len),
                    };
                    if let Ok(sealed) = sealed {
                        len = sealed;
                    }
                }
                let verdict = session.handle_packet(
                    now, stream, leg_id, component, from, &mut buf, len, &mut fork,
                );
                if let Verdict::Forward { len, .. } = verdict {
                    assert!(len <= buf.len());
                }
                while let Some(event) = session.poll_event() {
                    if let SessionEvent::TransferCompleted { transfer, .. }
                    | SessionEvent::TransferTimedOut { transfer } = event
                    {
                        assert!(transfer.0 >= 1 && transfer.0 <= next_transfer);
                    }
                }
                continue;
            }
        }
        rest = tail;
        while session.poll_event().is_some() {}
    }
});
