//! SRTP through the real binary, against an independent SRTP stack
//! (webrtc-rs's `webrtc-srtp`, with its replay protection on) as devices
//! and as the remote party: per-leg keys, RTP↔SRTP bridging, a handoff
//! chain whose outward SRTP index (rollover counter included) continues at
//! the remote, and what tampered, replayed and wrongly keyed packets do
//! (counted drops that change nothing). The GStreamer (libsrtp2) peers are
//! in `tests/gst_srtp.rs`; SDP and ng negotiation at the end.

mod common;

use std::collections::HashMap;

use baton_control::Client;
use baton_proto::v1::{self, request::Command, response::Result as Reply};
use bytes::Bytes;
use common::Relay;
use common::media::{Peer, rtp};
use common::native::{by_id, endpoint, pcmu};
use webrtc_srtp::context::Context;
use webrtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use webrtc_srtp::protection_profile::ProtectionProfile;

const AOR: &str = "sip:alice@example.com";
const GRUU_A: &str = "sip:alice@example.com;gr=urn:uuid:00000000-0000-0000-0000-00000000000a";
const GRUU_B: &str = "sip:alice@example.com;gr=urn:uuid:00000000-0000-0000-0000-00000000000b";
const GRUU_C: &str = "sip:alice@example.com;gr=urn:uuid:00000000-0000-0000-0000-00000000000c";

fn profile(suite: &str) -> ProtectionProfile {
    match suite {
        "AES_CM_128_HMAC_SHA1_80" => ProtectionProfile::Aes128CmHmacSha1_80,
        "AES_CM_128_HMAC_SHA1_32" => ProtectionProfile::Aes128CmHmacSha1_32,
        "AES_256_CM_HMAC_SHA1_80" => ProtectionProfile::Aes256CmHmacSha1_80,
        "AES_256_CM_HMAC_SHA1_32" => ProtectionProfile::Aes256CmHmacSha1_32,
        "AEAD_AES_128_GCM" => ProtectionProfile::AeadAes128Gcm,
        "AEAD_AES_256_GCM" => ProtectionProfile::AeadAes256Gcm,
        other => panic!("no profile for {other}"),
    }
}

/// An independent SRTP context for `key`, replay protection on.
fn context(key: &v1::SrtpKey) -> Context {
    let p = profile(&key.suite);
    let (master, salt) = key.key.split_at(p.key_len());
    Context::new(
        master,
        salt,
        p,
        Some(srtp_replay_protection(64)),
        Some(srtcp_replay_protection(64)),
    )
    .expect("context")
}

/// A key of `suite` made of `byte`.
fn key(suite: &str, byte: u8) -> v1::SrtpKey {
    let p = profile(suite);
    v1::SrtpKey {
        suite: suite.into(),
        key: vec![byte; p.key_len() + p.salt_len()],
    }
}

fn leg_srtp(suite: &str, peer: &v1::SrtpKey) -> Option<v1::LegSrtp> {
    Some(v1::LegSrtp {
        suite: suite.into(),
        peer_key: Some(peer.clone()),
    })
}

/// One device of the user: its socket, its relay address, how it sends,
/// and the relay's key toward it.
struct Device {
    peer: Peer,
    relay: String,
    /// (its own context, the relay's key toward it) when it speaks SRTP.
    srtp: Option<(Context, v1::SrtpKey)>,
    ssrc: u32,
    seq: u16,
    ts: u32,
}

impl Device {
    fn new(srtp_key: Option<&v1::SrtpKey>, ssrc: u32, seq: u16) -> Self {
        Self {
            peer: Peer::v4(),
            relay: String::new(),
            srtp: srtp_key.map(|k| (context(k), v1::SrtpKey::default())),
            ssrc,
            seq,
            ts: ssrc.wrapping_mul(7919),
        }
    }

    /// Where the relay expects this device, and its key toward it.
    fn attach(&mut self, addresses: &v1::StreamAddresses) {
        self.relay = addresses.user.as_ref().expect("user").rtp.clone();
        if let Some((_, relay_key)) = &mut self.srtp {
            *relay_key = addresses
                .user_key
                .clone()
                .expect("the relay's key toward an SRTP device");
        }
    }

    fn plain(&mut self) -> Vec<u8> {
        let plain = rtp(0, self.seq, self.ts, self.ssrc, &[0xd5; 160]);
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(160);
        plain
    }

    fn wire(&mut self, plain: &[u8]) -> Vec<u8> {
        match &mut self.srtp {
            Some((ctx, _)) => ctx.encrypt_rtp(plain).expect("encrypt").to_vec(),
            None => plain.to_vec(),
        }
    }

    fn send_packet(&mut self) {
        let plain = self.plain();
        let wire = self.wire(&plain);
        self.peer.send(&self.relay, &wire);
    }

    /// Receives what the relay forwards to this device, decrypted with the
    /// relay's key toward it.
    fn receive(&self, inbound: &mut Option<Context>) -> Vec<u8> {
        let (bytes, _) = self.peer.recv();
        match inbound {
            Some(ctx) => ctx
                .decrypt_rtp(&Bytes::from(bytes))
                .expect("the device decrypts with the relay's key toward it")
                .to_vec(),
            None => bytes,
        }
    }
}

struct Remote {
    peer: Peer,
    relay: String,
    /// Decrypts what the relay sends (the relay's key toward the remote).
    inbound: Context,
    /// What the remote sends with.
    outbound: Context,
    seq: u16,
    /// (SSRC, sequence, timestamp) of every packet it decrypted, in order.
    received: Vec<(u32, u16, u32)>,
}

impl Remote {
    /// Receives one packet, which must decrypt (authentication, replay
    /// and rollover estimation of an independent stack).
    fn receive(&mut self) {
        let (bytes, _) = self.peer.recv();
        let plain = self
            .inbound
            .decrypt_rtp(&Bytes::from(bytes))
            .unwrap_or_else(|e| panic!("the remote's SRTP stack refused a packet: {e}"));
        let ssrc = u32::from_be_bytes([plain[8], plain[9], plain[10], plain[11]]);
        let seq = u16::from_be_bytes([plain[2], plain[3]]);
        let ts = u32::from_be_bytes([plain[4], plain[5], plain[6], plain[7]]);
        self.received.push((ssrc, seq, ts));
    }

    /// Sends one packet, checks the current device gets it under its own
    /// key with the payload intact.
    fn talk_to(&mut self, device: &Device) {
        let plain = rtp(0, self.seq, u32::from(self.seq) * 160, 0xF, &[0x55; 160]);
        self.seq = self.seq.wrapping_add(1);
        let wire = self.outbound.encrypt_rtp(&plain).expect("encrypt");
        self.peer.send(&self.relay, &wire);
        let mut inbound = device.srtp.as_ref().map(|(_, k)| context(k));
        assert_eq!(
            device.receive(&mut inbound),
            plain,
            "the remote's media, re-encrypted for this device"
        );
    }
}

async fn create(client: &Client, request: v1::CreateSessionRequest) -> v1::CreateSessionResponse {
    match client.call(Command::CreateSession(request)).await {
        Ok(Reply::CreateSession(created)) => created,
        other => panic!("create: {other:?}"),
    }
}

async fn transfer(client: &Client, request: v1::TransferRequest) -> v1::TransferResponse {
    match client.call(Command::Transfer(request)).await {
        Ok(Reply::Transfer(response)) => response,
        other => panic!("transfer: {other:?}"),
    }
}

async fn session_info(client: &Client, session: &str) -> v1::SessionInfo {
    let Ok(Reply::GetSession(info)) = client
        .call(Command::GetSession(v1::GetSessionRequest {
            session: by_id(session),
        }))
        .await
    else {
        panic!("get_session")
    };
    info.session.expect("session")
}

async fn user_drops(client: &Client, session: &str) -> HashMap<String, u64> {
    let info = session_info(client, session).await;
    info.streams[0]
        .user
        .as_ref()
        .and_then(|l| l.stats.as_ref())
        .map(|s| s.drops.clone())
        .unwrap_or_default()
}

fn transfer_request(
    session: &str,
    gruu: &str,
    to: &Device,
    srtp_key: Option<&v1::SrtpKey>,
) -> v1::TransferRequest {
    v1::TransferRequest {
        session: by_id(session),
        gruu: gruu.into(),
        streams: vec![v1::TransferStream {
            peer: Some(endpoint(to.peer.addr())),
            srtp: srtp_key.map(|k| v1::LegSrtp {
                suite: k.suite.clone(),
                peer_key: Some(k.clone()),
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A call from device A with SRTP on both legs, signalled addresses.
async fn srtp_call(
    client: &Client,
    call_id: &str,
    a: &mut Device,
    a_key: &v1::SrtpKey,
    remote_key: &v1::SrtpKey,
) -> (String, Remote) {
    let remote_peer = Peer::v4();
    let created = create(
        client,
        v1::CreateSessionRequest {
            call_id: call_id.into(),
            from_tag: "a".into(),
            to_tag: "r".into(),
            aor: AOR.into(),
            gruu: GRUU_A.into(),
            streams: vec![v1::StreamSpec {
                kind: "audio".into(),
                codecs: vec![pcmu()],
                rtcp_mux: true,
                user_peer: Some(endpoint(a.peer.addr())),
                remote_peer: Some(endpoint(remote_peer.addr())),
                user_srtp: leg_srtp(&a_key.suite, a_key),
                remote_srtp: leg_srtp(&remote_key.suite, remote_key),
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    .await;
    let stream = &created.streams[0];
    a.attach(stream);
    let to_remote = stream
        .remote_key
        .clone()
        .expect("the relay's key toward the remote");
    assert_eq!(to_remote.suite, remote_key.suite);
    assert_ne!(
        to_remote.key, remote_key.key,
        "the relay has its own key per leg"
    );
    let remote = Remote {
        peer: remote_peer,
        relay: stream.remote.as_ref().expect("remote").rtp.clone(),
        inbound: context(&to_remote),
        outbound: context(remote_key),
        seq: 7,
        received: Vec::new(),
    };
    (created.session, remote)
}

/// The issue's chain A → B → A → C on an SRTP remote: A speaks
/// AES_CM_128_HMAC_SHA1_80, B plain RTP, C AEAD_AES_256_GCM, the remote
/// AEAD_AES_128_GCM. A starts 30 packets before the sequence wrap, so the
/// outward index wraps (rollover counter 0 → 1) in the middle of the chain.
/// The remote's own SRTP stack must accept every packet: one SSRC,
/// consecutive sequence numbers, an index that continues. The remote's
/// media reaches each device encrypted with that device's own key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_chain_across_srtp_and_rtp_devices_is_one_srtp_stream_at_the_remote() {
    let relay = Relay::start(&[]);
    let client = relay.client().await;
    let a_key = key("AES_CM_128_HMAC_SHA1_80", 0xa1);
    let c_key = key("AEAD_AES_256_GCM", 0xc3);
    let remote_key = key("AEAD_AES_128_GCM", 0x33);
    let mut a = Device::new(Some(&a_key), 0xA, 65_506);
    let (session, mut remote) = srtp_call(&client, "srtp-chain", &mut a, &a_key, &remote_key).await;
    let mut sent = 0;
    let mut run = |device: &mut Device, remote: &mut Remote, packets: usize| {
        for _ in 0..packets {
            device.send_packet();
            remote.receive();
            sent += 1;
        }
        remote.talk_to(device);
    };
    run(&mut a, &mut remote, 20);

    let mut b = Device::new(None, 0xB, 100);
    let to_b = transfer(&client, transfer_request(&session, GRUU_B, &b, None)).await;
    b.attach(&to_b.streams[0]);
    assert!(to_b.streams[0].user_key.is_none(), "B's leg is plain RTP");
    run(&mut b, &mut remote, 20);

    let mut a_again = Device::new(Some(&a_key), 0xA, a.seq);
    let to_a = transfer(
        &client,
        transfer_request(&session, GRUU_A, &a_again, Some(&a_key)),
    )
    .await;
    a_again.attach(&to_a.streams[0]);
    run(&mut a_again, &mut remote, 20);

    let mut c = Device::new(Some(&c_key), 0xC, 40_000);
    let to_c = transfer(
        &client,
        transfer_request(&session, GRUU_C, &c, Some(&c_key)),
    )
    .await;
    c.attach(&to_c.streams[0]);
    assert_eq!(
        to_c.streams[0].user_key.as_ref().map(|k| k.suite.as_str()),
        Some("AEAD_AES_256_GCM")
    );
    run(&mut c, &mut remote, 20);

    let got = &remote.received;
    assert_eq!(got.len(), sent);
    assert!(
        got.iter().all(|p| p.0 == 0xA),
        "one SSRC, the first device's"
    );
    for pair in got.windows(2) {
        assert_eq!(
            pair[1].1,
            pair[0].1.wrapping_add(1),
            "consecutive: {pair:?}"
        );
        assert!(
            (pair[1].2.wrapping_sub(pair[0].2) as i32) >= 160,
            "timestamps move forward by at least a packet: {pair:?}"
        );
    }
    assert!(
        got.iter().any(|p| p.1 == 65_535) && got.iter().any(|p| p.1 == 0),
        "the outward sequence wrapped (a new rollover counter at the remote)"
    );
    let drops = user_drops(&client, &session).await;
    assert!(!drops.contains_key("srtp_auth_failed"), "{drops:?}");
}

/// Tampered, replayed, wrongly keyed and truncated packets from the
/// device are dropped and counted by reason; the valid ones around them
/// go through, and the remote never sees a gap or a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_srtp_is_dropped_by_reason_and_changes_nothing() {
    let relay = Relay::start(&[]);
    let client = relay.client().await;
    let a_key = key("AES_CM_128_HMAC_SHA1_32", 0x5a);
    let remote_key = key("AES_CM_128_HMAC_SHA1_80", 0x66);
    let mut a = Device::new(Some(&a_key), 0xA, 1_000);
    let (session, mut remote) = srtp_call(&client, "srtp-bad", &mut a, &a_key, &remote_key).await;
    a.send_packet();
    remote.receive();

    // A replay of a packet already accepted.
    let plain = a.plain();
    let wire = a.wire(&plain);
    a.peer.send(&a.relay, &wire);
    remote.receive();
    a.peer.send(&a.relay, &wire);
    // Tampered payload, tampered header, tampered tag.
    for offset in [wire.len() - 20, 3, wire.len() - 1] {
        let plain = a.plain();
        let mut wire = a.wire(&plain);
        wire[offset] ^= 0x01;
        a.peer.send(&a.relay, &wire);
        // A refused packet uses up nothing: the next one reuses its
        // number and must pass.
        a.seq = a.seq.wrapping_sub(1);
        a.ts = a.ts.wrapping_sub(160);
    }
    // Another key (the wrong suite's length too), plain RTP, and runts.
    let mut wrong = context(&key("AES_CM_128_HMAC_SHA1_32", 0x00));
    let stray = rtp(0, a.seq.wrapping_add(50), 5, 0xA, &[1; 160]);
    a.peer
        .send(&a.relay, &wrong.encrypt_rtp(&stray).expect("encrypt"));
    a.peer.send(&a.relay, &stray);
    for len in [0usize, 1, 11, 12, 15] {
        a.peer.send(&a.relay, &vec![0x80; len]);
    }
    remote.peer.expect_silence();

    // Valid media still flows, continuously.
    for _ in 0..5 {
        a.send_packet();
        remote.receive();
    }
    let seqs: Vec<u16> = remote.received.iter().map(|p| p.1).collect();
    assert_eq!(seqs, (1_000..1_007).collect::<Vec<u16>>());
    let drops = user_drops(&client, &session).await;
    assert_eq!(drops.get("srtp_replay"), Some(&1), "{drops:?}");
    assert!(
        drops.get("srtp_auth_failed").copied().unwrap_or(0) >= 5,
        "tampered ×3, wrong key, plain: {drops:?}"
    );
    assert!(
        drops.get("malformed_rtp").copied().unwrap_or(0) >= 4,
        "{drops:?}"
    );
}

/// A pending device whose packets fail authentication never switches the
/// call, however many it sends; its first authentic packet does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_packets_never_switch_a_transfer() {
    let relay = Relay::start(&[]);
    let client = relay.client().await;
    let a_key = key("AES_CM_128_HMAC_SHA1_80", 0x11);
    let b_key = key("AES_CM_128_HMAC_SHA1_80", 0x22);
    let remote_key = key("AES_CM_128_HMAC_SHA1_80", 0x33);
    let mut a = Device::new(Some(&a_key), 0xA, 10);
    let (session, mut remote) =
        srtp_call(&client, "srtp-switch", &mut a, &a_key, &remote_key).await;
    a.send_packet();
    remote.receive();
    let mut b = Device::new(Some(&b_key), 0xB, 500);
    let to_b = transfer(
        &client,
        transfer_request(&session, GRUU_B, &b, Some(&b_key)),
    )
    .await;
    b.attach(&to_b.streams[0]);
    // B's packets under A's key: from B's signalled address, in order,
    // but not B's.
    let mut impostor = context(&a_key);
    for seq in 500..510u16 {
        let wire = impostor
            .encrypt_rtp(&rtp(0, seq, u32::from(seq) * 160, 0xB, &[0; 160]))
            .expect("encrypt");
        b.peer.send(&b.relay, &wire);
    }
    remote.peer.expect_silence();
    let info = session_info(&client, &session).await;
    assert_eq!(info.gruu, GRUU_A, "no switch");
    assert_ne!(info.pending_transfer_id, 0, "the transfer is still open");
    // A still talks to the remote.
    a.send_packet();
    remote.receive();
    // B's own packet switches.
    b.send_packet();
    remote.receive();
    assert_eq!(
        remote.received.last().map(|p| p.0),
        Some(0xA),
        "the outward SSRC"
    );
}
