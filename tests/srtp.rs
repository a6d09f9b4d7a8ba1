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
    /// That key.
    inbound_key: v1::SrtpKey,
    /// What the remote sends with.
    outbound: Context,
    seq: u16,
    /// (SSRC, sequence, timestamp) of every packet it decrypted, in order.
    received: Vec<(u32, u16, u32)>,
}

impl Remote {
    fn inbound_key(&self) -> v1::SrtpKey {
        self.inbound_key.clone()
    }

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

async fn update(client: &Client, request: v1::UpdateSessionRequest) -> v1::UpdateSessionResponse {
    match client.call(Command::UpdateSession(request)).await {
        Ok(Reply::UpdateSession(updated)) => updated,
        other => panic!("update: {other:?}"),
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
        inbound_key: to_remote.clone(),
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
    // The right key bytes under another suite (_80 where _32 was agreed).
    let mut wrong_suite = context(&v1::SrtpKey {
        suite: "AES_CM_128_HMAC_SHA1_80".into(),
        key: a_key.key.clone(),
    });
    let stray = rtp(0, a.seq.wrapping_add(60), 5, 0xA, &[1; 160]);
    a.peer
        .send(&a.relay, &wrong_suite.encrypt_rtp(&stray).expect("encrypt"));
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
        drops.get("srtp_auth_failed").copied().unwrap_or(0) >= 6,
        "tampered ×3, wrong key, plain, wrong suite: {drops:?}"
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

// ---------------------------------------------------------------------
// Negotiation: SDES offer/answer through the relay (RFC 4568).

use baton_control::sip::crypto::{decode_base64, encode_base64};
use baton_control::sip::sdp::Sdp;

fn srtp_body(ip: &str, port: u16, proto: &str, crypto: &[String]) -> String {
    let mut body = format!(
        "v=0\r\no=phone 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} {proto} 0\r\na=rtpmap:0 PCMU/8000\r\n"
    );
    for line in crypto {
        body.push_str(&format!("a=crypto:{line}\r\n"));
    }
    body.push_str("a=rtcp-mux\r\na=sendrecv\r\n");
    body
}

/// (tag, suite, key) of every a=crypto line of a body's first m= line.
fn crypto_lines(body: &str) -> Vec<(u32, String, Vec<u8>)> {
    let sdp = Sdp::parse(body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    sdp.media(0)
        .expect("m=")
        .crypto
        .iter()
        .map(|(value, _)| {
            let mut fields = value.split_ascii_whitespace();
            let tag = fields.next().expect("tag").parse().expect("tag");
            let suite = fields.next().expect("suite").to_owned();
            let inline = fields
                .next()
                .expect("key")
                .strip_prefix("inline:")
                .expect("inline");
            let key = decode_base64(inline.split('|').next().expect("key")).expect("base64");
            (tag, suite, key)
        })
        .collect()
}

/// The far party's SRTP answer (one `a=crypto` line, `tag` with `key`)
/// through `update_session`, from the remote side.
async fn answer_savp(
    client: &Client,
    session: &str,
    far: &Peer,
    tag: u32,
    key: &v1::SrtpKey,
) -> v1::UpdateSessionResponse {
    let answer = srtp_body(
        "127.0.0.1",
        far.addr().port(),
        "RTP/SAVP",
        &[format!(
            "{tag} {} inline:{}",
            key.suite,
            encode_base64(&key.key)
        )],
    );
    update(
        client,
        v1::UpdateSessionRequest {
            session: by_id(session),
            to_tag: "f".into(),
            sdp: answer,
            ..Default::default()
        },
    )
    .await
}

fn proto_of(body: &str) -> String {
    Sdp::parse(body).expect("sdp").media(0).expect("m=").proto
}

fn addr_of(body: &str) -> String {
    Sdp::parse(body)
        .expect("sdp")
        .media(0)
        .expect("m=")
        .rtp
        .expect("address")
        .to_string()
}

/// An SRTP phone calls a plain-RTP carrier (`other_transport` RTP/AVP):
/// the relay declines the phone's lines it cannot honour (MKI, an unknown
/// suite), answers the first usable one with its own key and the phone's
/// tag, and the carrier sees plain RTP with no key at all. Media then flows
/// both ways, encrypted only on the phone's leg.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_srtp_phone_bridged_to_a_plain_carrier_over_sdp() {
    let relay = Relay::start(&[]);
    let client = relay.client().await;
    let (phone, carrier) = (Peer::v4(), Peer::v4());
    let phone_key = key("AES_CM_128_HMAC_SHA1_32", 0x42);
    let encoded = encode_base64(&phone_key.key);
    let offer = srtp_body(
        "127.0.0.1",
        phone.addr().port(),
        "RTP/SAVP",
        &[
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{encoded}|2^31|1:4"),
            format!("2 F8_128_HMAC_SHA1_80 inline:{encoded}"),
            format!("3 AES_CM_128_HMAC_SHA1_32 inline:{encoded}|2^31"),
        ],
    );
    let created = create(
        &client,
        v1::CreateSessionRequest {
            call_id: "sdes-bridge".into(),
            from_tag: "a".into(),
            aor: AOR.into(),
            gruu: GRUU_A.into(),
            sdp: offer,
            other_transport: "RTP/AVP".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(proto_of(&created.sdp), "RTP/AVP");
    assert!(!created.sdp.contains("a=crypto"), "{}", created.sdp);
    let to_carrier = addr_of(&created.sdp);
    let answer = srtp_body("127.0.0.1", carrier.addr().port(), "RTP/AVP", &[]);
    let updated = update(
        &client,
        v1::UpdateSessionRequest {
            session: by_id(&created.session),
            to_tag: "c".into(),
            sdp: answer,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(proto_of(&updated.sdp), "RTP/SAVP");
    let lines = crypto_lines(&updated.sdp);
    assert_eq!(lines.len(), 1, "{}", updated.sdp);
    let (tag, suite, relay_key) = &lines[0];
    assert_eq!((*tag, suite.as_str()), (3, "AES_CM_128_HMAC_SHA1_32"));
    assert_eq!(relay_key.len(), 30);
    assert_ne!(
        relay_key, &phone_key.key,
        "the relay answers with its own key"
    );
    let to_phone_relay = addr_of(&updated.sdp);
    let info = session_info(&client, &created.session).await;
    let user_leg = info.streams[0].user.clone().expect("user leg");
    assert_eq!(
        (user_leg.transport.as_str(), user_leg.srtp_suite.as_str()),
        ("RTP/SAVP", "AES_CM_128_HMAC_SHA1_32")
    );

    let mut phone_tx = context(&phone_key);
    let mut phone_rx = context(&v1::SrtpKey {
        suite: suite.clone(),
        key: relay_key.clone(),
    });
    for seq in 0..10u16 {
        let plain = rtp(0, seq, u32::from(seq) * 160, 0x77, &[seq as u8; 160]);
        phone.send(
            &to_phone_relay,
            &phone_tx.encrypt_rtp(&plain).expect("encrypt"),
        );
        assert_eq!(carrier.recv().0, plain, "the carrier gets plain RTP");
        let back = rtp(0, 100 + seq, 0, 0x99, &[7; 160]);
        carrier.send(&to_carrier, &back);
        let (wire, _) = phone.recv();
        assert_ne!(wire, back, "encrypted toward the phone");
        assert_eq!(
            phone_rx
                .decrypt_rtp(&Bytes::from(wire))
                .expect("decrypts")
                .to_vec(),
            back
        );
    }
}

/// A plain phone calls an SRTP-only party (`other_transport` RTP/SAVP):
/// the relay offers every suite it implements with fresh keys, tags 1 to
/// 6; the answer picks one; a re-offer keeps the relay's key for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_offers_its_own_keys_and_keeps_them_on_a_re_offer() {
    let relay = Relay::start(&[]);
    let client = relay.client().await;
    let (phone, far) = (Peer::v4(), Peer::v4());
    let offer = srtp_body("127.0.0.1", phone.addr().port(), "RTP/AVP", &[]);
    let created = create(
        &client,
        v1::CreateSessionRequest {
            call_id: "sdes-offer".into(),
            from_tag: "a".into(),
            aor: AOR.into(),
            gruu: GRUU_A.into(),
            sdp: offer.clone(),
            other_transport: "RTP/SAVP".into(),
            sdes: Some(v1::SdesOptions {
                exclude: vec!["AEAD_AES_256_GCM".into()],
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(proto_of(&created.sdp), "RTP/SAVP");
    let offered = crypto_lines(&created.sdp);
    let suites: Vec<&str> = offered.iter().map(|l| l.1.as_str()).collect();
    assert_eq!(
        suites,
        [
            "AES_CM_128_HMAC_SHA1_80",
            "AES_CM_128_HMAC_SHA1_32",
            "AEAD_AES_128_GCM",
            "AES_256_CM_HMAC_SHA1_80",
            "AES_256_CM_HMAC_SHA1_32"
        ],
        "every suite but the excluded one, best first"
    );
    assert_eq!(
        offered.iter().map(|l| l.0).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert!(
        created
            .sdp
            .lines()
            .filter(|l| l.starts_with("a=crypto:"))
            .all(|l| !l.trim_end().ends_with('=')),
        "keys without base64 padding by default (rtpengine's habit; SDES-pad adds it)"
    );
    let far_key = key("AEAD_AES_128_GCM", 0x5c);
    let updated = answer_savp(&client, &created.session, &far, 3, &far_key).await;
    assert_eq!(proto_of(&updated.sdp), "RTP/AVP");
    assert!(!updated.sdp.contains("a=crypto"));
    let to_far = addr_of(&created.sdp);
    let to_phone = addr_of(&updated.sdp);
    let relay_key = v1::SrtpKey {
        suite: "AEAD_AES_128_GCM".into(),
        key: offered[2].2.clone(),
    };
    let mut far_rx = context(&relay_key);
    let mut far_tx = context(&far_key);
    let plain = rtp(0, 1, 160, 0x10, &[3; 160]);
    phone.send(&to_phone, &plain);
    let (wire, _) = far.recv();
    assert_eq!(
        far_rx
            .decrypt_rtp(&Bytes::from(wire))
            .expect("decrypts")
            .to_vec(),
        plain
    );
    let back = rtp(0, 9, 160, 0x20, &[4; 160]);
    far.send(&to_far, &far_tx.encrypt_rtp(&back).expect("encrypt"));
    assert_eq!(phone.recv().0, back);

    // The phone re-offers (same body): the far end gets the negotiated
    // line again, with the key it already has.
    let reoffer = update(
        &client,
        v1::UpdateSessionRequest {
            session: by_id(&created.session),
            sdp: offer,
            sdp_from: v1::Party::User as i32,
            ..Default::default()
        },
    )
    .await;
    let again = crypto_lines(&reoffer.sdp);
    assert_eq!(
        again,
        vec![(3, "AEAD_AES_128_GCM".to_owned(), offered[2].2.clone())]
    );
    // Media under the kept keys continues.
    let plain = rtp(0, 2, 320, 0x10, &[5; 160]);
    phone.send(&to_phone, &plain);
    let (wire, _) = far.recv();
    assert_eq!(
        far_rx
            .decrypt_rtp(&Bytes::from(wire))
            .expect("decrypts")
            .to_vec(),
        plain
    );
}

/// An SRTP offer with no line the relay can honour is refused, saying why
/// for each line; a body that would smuggle many lines is refused by size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srtp_offers_the_relay_cannot_honour_are_refused_with_the_reason() {
    let relay = Relay::start(&[]);
    let client = relay.client().await;
    let k = encode_base64(&[9; 30]);
    let refused = |body: String| {
        let client = &client;
        async move {
            match client
                .call(Command::CreateSession(v1::CreateSessionRequest {
                    call_id: format!("sdes-refused-{}", body.len()),
                    from_tag: "a".into(),
                    aor: AOR.into(),
                    gruu: GRUU_A.into(),
                    sdp: body,
                    ..Default::default()
                }))
                .await
            {
                Err(baton_control::ClientError::Status(status)) => status.message,
                other => panic!("expected a refusal: {other:?}"),
            }
        }
    };
    let message = refused(srtp_body(
        "127.0.0.1",
        4000,
        "RTP/SAVP",
        &[
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k}|2^31|1:4"),
            format!("2 AES_CM_128_HMAC_SHA1_80 inline:{k} UNENCRYPTED_SRTCP"),
            format!("3 AES_CM_128_HMAC_SHA1_80 inline:{k}|2^20"),
        ],
    ))
    .await;
    for reason in ["MKI", "UNENCRYPTED_SRTCP", "lifetime \"2^20\""] {
        assert!(message.contains(reason), "{reason} in {message}");
    }
    let many: Vec<String> = (0..40)
        .map(|i| format!("{i} AES_CM_128_HMAC_SHA1_80 inline:{k}"))
        .collect();
    let message = refused(srtp_body("127.0.0.1", 4000, "RTP/SAVP", &many)).await;
    assert!(message.contains("a=crypto lines"), "{message}");
}

// ---------------------------------------------------------------------
// rtpengine's ng protocol, as Kamailio drives SRTP bridging.

use common::ng::{Proxy, flags, reason, relay_with_ng, request, result, text};

/// Kamailio's `rtpengine_offer("RTP/SAVP SDES-no-AEAD_AES_256_GCM SDES-pad")`
/// toward an SRTP party, then its SDES answer back to the plain phone.
#[test]
fn ng_bridges_a_plain_phone_to_an_srtp_party_with_rtpengine_flags() {
    let (_relay, ng, _) = relay_with_ng();
    let mut proxy = Proxy::new(ng);
    let (phone, far) = (Peer::v4(), Peer::v4());
    let offer = proxy.call(&request(vec![
        ("command", text("offer")),
        ("call-id", text("ng-sdes")),
        ("from-tag", text("a-tag")),
        (
            "sdp",
            text(srtp_body("127.0.0.1", phone.addr().port(), "RTP/AVP", &[])),
        ),
        ("ICE", text("remove")),
        ("DTLS", text("off")),
        ("transport-protocol", text("RTP/SAVP")),
        (
            "SDES",
            flags(&["no-AEAD_AES_256_GCM", "no-F8_128_HMAC_SHA1_80"]),
        ),
        ("flags", flags(&["SDES-pad"])),
    ]));
    assert_eq!(result(&offer), "ok", "{}", reason(&offer));
    let to_far = baton_control::ng::wire::get_str(&offer, "sdp")
        .expect("sdp")
        .to_owned();
    assert_eq!(proto_of(&to_far), "RTP/SAVP");
    let offered = crypto_lines(&to_far);
    assert_eq!(offered.len(), 5, "{to_far}");
    assert!(offered.iter().all(|l| l.1 != "AEAD_AES_256_GCM"));
    assert!(
        to_far.contains("AEAD_AES_128_GCM inline:")
            && to_far
                .lines()
                .any(|l| l.contains("GCM") && l.trim_end().ends_with('=')),
        "SDES-pad keeps the base64 padding: {to_far}"
    );
    let far_key = key("AES_CM_128_HMAC_SHA1_80", 0x21);
    let answer = proxy.call(&request(vec![
        ("command", text("answer")),
        ("call-id", text("ng-sdes")),
        ("from-tag", text("a-tag")),
        ("to-tag", text("far-tag")),
        (
            "sdp",
            text(srtp_body(
                "127.0.0.1",
                far.addr().port(),
                "RTP/SAVP",
                &[format!(
                    "1 AES_CM_128_HMAC_SHA1_80 inline:{}",
                    encode_base64(&far_key.key)
                )],
            )),
        ),
        ("ICE", text("remove")),
    ]));
    assert_eq!(result(&answer), "ok", "{}", reason(&answer));
    let to_phone = baton_control::ng::wire::get_str(&answer, "sdp")
        .expect("sdp")
        .to_owned();
    assert_eq!(proto_of(&to_phone), "RTP/AVP");
    assert!(!to_phone.contains("a=crypto"));
    // Media: plain from the phone, SRTP under tag 1's relay key at the far end.
    let mut far_rx = context(&v1::SrtpKey {
        suite: "AES_CM_128_HMAC_SHA1_80".into(),
        key: offered[0].2.clone(),
    });
    let plain = rtp(0, 1, 160, 0x31, &[1; 160]);
    phone.send(&addr_of(&to_phone), &plain);
    let (wire, _) = far.recv();
    assert_eq!(
        far_rx
            .decrypt_rtp(&Bytes::from(wire))
            .expect("decrypts")
            .to_vec(),
        plain
    );
    let mut far_tx = context(&far_key);
    let back = rtp(0, 5, 800, 0x32, &[2; 160]);
    far.send(
        &addr_of(&to_far),
        &far_tx.encrypt_rtp(&back).expect("encrypt"),
    );
    assert_eq!(phone.recv().0, back);
}

/// ng options baton cannot honour are refused with a reason, never
/// ignored: SDES-off toward SRTP (no key exchange without DTLS), SDES
/// options it does not implement, unencrypted SRTCP, DTLS transports.
#[test]
fn ng_sdes_options_baton_cannot_honour_are_refused() {
    let (_relay, ng, _) = relay_with_ng();
    let mut proxy = Proxy::new(ng);
    let phone = Peer::v4();
    let body = srtp_body("127.0.0.1", phone.addr().port(), "RTP/AVP", &[]);
    for (n, (extra, why)) in [
        (
            vec![
                ("transport-protocol", text("RTP/SAVP")),
                ("SDES", flags(&["off"])),
            ],
            "leaves no key exchange",
        ),
        (
            vec![
                ("transport-protocol", text("RTP/SAVP")),
                ("flags", flags(&["SDES-nonew"])),
            ],
            "not supported",
        ),
        (
            vec![("SDES", flags(&["unencrypted_srtcp"]))],
            "always encrypts",
        ),
        (
            vec![
                ("transport-protocol", text("UDP/TLS/RTP/SAVPF")),
                ("DTLS", text("off")),
            ],
            "DTLS=off",
        ),
        (
            vec![("SDES", flags(&["only-F8_128_HMAC_SHA1_80"]))],
            "names no suite",
        ),
        (vec![("OSRTP", text("offer"))], "OSRTP"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut pairs = vec![
            ("command", text("offer")),
            ("call-id", text(format!("ng-refused-{n}"))),
            ("from-tag", text("a-tag")),
            ("sdp", text(body.clone())),
        ];
        pairs.extend(extra);
        let reply = proxy.call(&request(pairs));
        assert_eq!(result(&reply), "error", "case {n}");
        assert!(reason(&reply).contains(why), "case {n}: {}", reason(&reply));
    }
}

/// SRTCP both ways across a switch: the new device's sender report
/// reaches the remote decrypted, translated into the outward SSRC and
/// re-encrypted under the remote leg's key with an SRTCP index that keeps
/// rising (the remote's replay check accepts it); the remote's receiver
/// report reaches the device under the device's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srtcp_is_translated_on_the_decrypted_packets_across_a_switch() {
    use webrtc_util::marshal::{Marshal, Unmarshal};
    let relay = Relay::start(&[]);
    let client = relay.client().await;
    let a_key = key("AES_CM_128_HMAC_SHA1_80", 0x61);
    let b_key = key("AEAD_AES_128_GCM", 0x62);
    let remote_key = key("AES_CM_128_HMAC_SHA1_32", 0x63);
    let mut a = Device::new(Some(&a_key), 0xA, 300);
    let (session, mut remote) = srtp_call(&client, "srtcp", &mut a, &a_key, &remote_key).await;
    let sr = |ssrc: u32| {
        rtcp::sender_report::SenderReport {
            ssrc,
            rtp_time: 1234,
            packet_count: 1,
            octet_count: 160,
            ..Default::default()
        }
        .marshal()
        .expect("marshal")
        .to_vec()
    };
    let to_remote_key = {
        let info = session_info(&client, &session).await;
        assert_eq!(
            info.streams[0].remote.as_ref().expect("leg").srtp_suite,
            remote_key.suite
        );
        // The same key the remote's inbound context has.
        remote.inbound_key()
    };
    let mut remote_rtcp_rx = context(&to_remote_key);
    let mut sent_indexes = Vec::new();
    let mut check_sr = |remote: &Remote, rx: &mut Context| {
        let (wire, _) = remote.peer.recv();
        let index = u32::from_be_bytes([
            wire[wire.len() - 14],
            wire[wire.len() - 13],
            wire[wire.len() - 12],
            wire[wire.len() - 11],
        ]) & 0x7fff_ffff;
        sent_indexes.push(index);
        let plain = rx
            .decrypt_rtcp(&Bytes::from(wire))
            .expect("SRTCP decrypts at the remote");
        let mut bytes = plain.clone();
        rtcp::sender_report::SenderReport::unmarshal(&mut bytes)
            .expect("an SR")
            .ssrc
    };
    a.send_packet();
    remote.receive();
    let (ctx, _) = a.srtp.as_mut().expect("srtp");
    a.peer
        .send(&a.relay, &ctx.encrypt_rtcp(&sr(0xA)).expect("encrypt"));
    assert_eq!(check_sr(&remote, &mut remote_rtcp_rx), 0xA);

    let mut b = Device::new(Some(&b_key), 0xB, 9);
    let to_b = transfer(
        &client,
        transfer_request(&session, GRUU_B, &b, Some(&b_key)),
    )
    .await;
    b.attach(&to_b.streams[0]);
    b.send_packet();
    remote.receive();
    let (ctx, _) = b.srtp.as_mut().expect("srtp");
    b.peer
        .send(&b.relay, &ctx.encrypt_rtcp(&sr(0xB)).expect("encrypt"));
    assert_eq!(
        check_sr(&remote, &mut remote_rtcp_rx),
        0xA,
        "B's report in the outward SSRC"
    );
    assert!(
        sent_indexes[1] > sent_indexes[0],
        "SRTCP index rises: {sent_indexes:?}"
    );

    // The remote's receiver report reaches B under B's key.
    let rr = rtcp::receiver_report::ReceiverReport {
        ssrc: 0xF,
        ..Default::default()
    }
    .marshal()
    .expect("marshal");
    let wire = remote.outbound.encrypt_rtcp(&rr).expect("encrypt");
    remote.peer.send(&remote.relay, &wire);
    let (got, _) = b.peer.recv();
    let relay_key = b.srtp.as_ref().map(|(_, k)| k.clone()).expect("key");
    context(&relay_key)
        .decrypt_rtcp(&Bytes::from(got))
        .expect("the device decrypts the remote's report under its own key");
}

/// An explicit SRTP leg whose peer key comes later: its media is dropped
/// (`srtp_no_key`) until `update_session` gives the key, then flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leg_waits_for_its_key_and_then_flows() {
    let relay = Relay::start(&[]);
    let client = relay.client().await;
    let (device, remote_peer) = (Peer::v4(), Peer::v4());
    let created = create(
        &client,
        v1::CreateSessionRequest {
            call_id: "late-key".into(),
            from_tag: "a".into(),
            aor: AOR.into(),
            gruu: GRUU_A.into(),
            streams: vec![v1::StreamSpec {
                kind: "audio".into(),
                codecs: vec![pcmu()],
                rtcp_mux: true,
                user_peer: Some(endpoint(device.addr())),
                remote_peer: Some(endpoint(remote_peer.addr())),
                remote_srtp: Some(v1::LegSrtp {
                    suite: "AES_CM_128_HMAC_SHA1_80".into(),
                    peer_key: None,
                }),
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    .await;
    let stream = &created.streams[0];
    let to_remote = stream
        .remote_key
        .clone()
        .expect("the relay's key exists already");
    let remote_relay = stream.remote.as_ref().expect("remote").rtp.clone();
    let user_relay = stream.user.as_ref().expect("user").rtp.clone();
    let remote_key = key("AES_CM_128_HMAC_SHA1_80", 0x77);
    let mut remote_tx = context(&remote_key);
    let plain = rtp(0, 1, 160, 0xF, &[1; 160]);
    remote_peer.send(
        &remote_relay,
        &remote_tx.encrypt_rtp(&plain).expect("encrypt"),
    );
    device.expect_silence();
    let info = session_info(&client, &created.session).await;
    let drops = info.streams[0]
        .remote
        .clone()
        .expect("leg")
        .stats
        .expect("stats")
        .drops;
    assert_eq!(drops.get("srtp_no_key"), Some(&1), "{drops:?}");

    update(
        &client,
        v1::UpdateSessionRequest {
            session: by_id(&created.session),
            streams: vec![v1::StreamUpdate {
                index: 0,
                remote_peer_key: Some(remote_key.clone()),
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    .await;
    let plain = rtp(0, 2, 320, 0xF, &[2; 160]);
    remote_peer.send(
        &remote_relay,
        &remote_tx.encrypt_rtp(&plain).expect("encrypt"),
    );
    assert_eq!(device.recv().0, plain);
    let up = rtp(0, 50, 160, 0xA, &[3; 160]);
    device.send(&user_relay, &up);
    let (wire, _) = remote_peer.recv();
    assert_eq!(
        context(&to_remote)
            .decrypt_rtp(&Bytes::from(wire))
            .expect("decrypts")
            .to_vec(),
        up
    );
    // A key for a plain leg is refused.
    let refused = client
        .call(Command::UpdateSession(v1::UpdateSessionRequest {
            session: by_id(&created.session),
            streams: vec![v1::StreamUpdate {
                index: 0,
                user_peer_key: Some(remote_key),
                ..Default::default()
            }],
            ..Default::default()
        }))
        .await;
    assert!(
        matches!(&refused, Err(baton_control::ClientError::Status(s)) if s.message.contains("plain RTP")),
        "{refused:?}"
    );
}

/// A phone re-offers with a new key (a re-INVITE): until the answer
/// reaches it, it still sends under the old key, and that media goes on;
/// its first packet under the new key retires the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_key_keeps_the_old_key_until_the_new_one_is_used() {
    let relay = Relay::start(&[]);
    let client = relay.client().await;
    let (phone, carrier) = (Peer::v4(), Peer::v4());
    let k1 = key("AES_CM_128_HMAC_SHA1_80", 0x01);
    let k2 = key("AES_CM_128_HMAC_SHA1_80", 0x02);
    let offer = |k: &v1::SrtpKey| {
        srtp_body(
            "127.0.0.1",
            phone.addr().port(),
            "RTP/SAVP",
            &[format!(
                "1 AES_CM_128_HMAC_SHA1_80 inline:{}",
                encode_base64(&k.key)
            )],
        )
    };
    let created = create(
        &client,
        v1::CreateSessionRequest {
            call_id: "re-key".into(),
            from_tag: "a".into(),
            aor: AOR.into(),
            gruu: GRUU_A.into(),
            sdp: offer(&k1),
            other_transport: "RTP/AVP".into(),
            ..Default::default()
        },
    )
    .await;
    let answered = update(
        &client,
        v1::UpdateSessionRequest {
            session: by_id(&created.session),
            to_tag: "c".into(),
            sdp: srtp_body("127.0.0.1", carrier.addr().port(), "RTP/AVP", &[]),
            ..Default::default()
        },
    )
    .await;
    let to_relay = addr_of(&answered.sdp);
    let mut old = context(&k1);
    let mut seq = 0u16;
    let mut send = |ctx: &mut Context| {
        seq += 1;
        let plain = rtp(0, seq, u32::from(seq) * 160, 0x55, &[9; 160]);
        phone.send(&to_relay, &ctx.encrypt_rtp(&plain).expect("encrypt"));
        plain
    };
    let plain = send(&mut old);
    assert_eq!(carrier.recv().0, plain);
    // The re-offer with k2; the phone has not seen the answer yet.
    update(
        &client,
        v1::UpdateSessionRequest {
            session: by_id(&created.session),
            sdp: offer(&k2),
            sdp_from: v1::Party::User as i32,
            ..Default::default()
        },
    )
    .await;
    let plain = send(&mut old);
    assert_eq!(carrier.recv().0, plain, "the old key still works meanwhile");
    let mut new = context(&k2);
    let plain = send(&mut new);
    assert_eq!(carrier.recv().0, plain, "the new key works");
    let _ = send(&mut old);
    carrier.expect_silence();
    let drops = user_drops(&client, &created.session).await;
    assert_eq!(
        drops.get("srtp_auth_failed"),
        Some(&1),
        "the old key is retired: {drops:?}"
    );
}

/// The relay offered SRTP; a plain answer is refused unless the request
/// accepts it (ng `OSRTP=accept`); an answer that renumbered the tag gets
/// the relay's key of its suite; session-level keys never cross.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_to_the_relays_srtp_offer_are_read_as_answers() {
    let relay = Relay::start(&[]);
    let client = relay.client().await;
    let phone = Peer::v4();
    let mut offer = srtp_body("127.0.0.1", phone.addr().port(), "RTP/AVP", &[]);
    // A key where none belongs: at session level.
    offer = offer.replacen(
        "t=0 0\r\n",
        "t=0 0\r\na=crypto:9 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\nk=clear:secret\r\n",
        1,
    );
    let start = |call: &str| {
        let client = &client;
        let offer = offer.clone();
        let call = call.to_owned();
        async move {
            create(
                client,
                v1::CreateSessionRequest {
                    call_id: call,
                    from_tag: "a".into(),
                    aor: AOR.into(),
                    gruu: GRUU_A.into(),
                    sdp: offer,
                    other_transport: "RTP/SAVP".into(),
                    ..Default::default()
                },
            )
            .await
        }
    };
    let created = start("answer-plain").await;
    assert!(
        !created.sdp.contains("secret") && !created.sdp.contains("a=crypto:9"),
        "{}",
        created.sdp
    );
    let plain_answer = srtp_body("127.0.0.1", 4000, "RTP/AVP", &[]);
    let refused = client
        .call(Command::UpdateSession(v1::UpdateSessionRequest {
            session: by_id(&created.session),
            to_tag: "f".into(),
            sdp: plain_answer.clone(),
            ..Default::default()
        }))
        .await;
    assert!(
        matches!(&refused, Err(baton_control::ClientError::Status(s)) if s.message.contains("OSRTP=accept")),
        "{refused:?}"
    );
    // With the answer (as Kamailio passes OSRTP-accept to rtpengine_answer).
    let accepting = start("answer-plain-ok").await;
    let updated = update(
        &client,
        v1::UpdateSessionRequest {
            session: by_id(&accepting.session),
            to_tag: "f".into(),
            sdp: plain_answer,
            sdes: Some(v1::SdesOptions {
                accept_plain: true,
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(proto_of(&updated.sdp), "RTP/AVP");
    let info = session_info(&client, &accepting.session).await;
    assert_eq!(
        info.streams[0].remote.as_ref().expect("leg").transport,
        "RTP/AVP"
    );

    // Tag 2 was AES_CM_128_HMAC_SHA1_32; the answer calls its line 7.
    let renumbered = start("answer-renumbered").await;
    let offered = crypto_lines(&renumbered.sdp);
    assert_eq!(offered[1].1, "AES_CM_128_HMAC_SHA1_32");
    let far_key = key("AES_CM_128_HMAC_SHA1_32", 0x3c);
    let far = Peer::v4();
    let updated = answer_savp(&client, &renumbered.session, &far, 7, &far_key).await;
    let plain = rtp(0, 1, 160, 0x10, &[3; 160]);
    phone.send(&addr_of(&updated.sdp), &plain);
    let (wire, _) = far.recv();
    let mut far_rx = context(&v1::SrtpKey {
        suite: "AES_CM_128_HMAC_SHA1_32".into(),
        key: offered[1].2.clone(),
    });
    assert_eq!(
        far_rx
            .decrypt_rtp(&Bytes::from(wire))
            .expect("under the offered key of its suite")
            .to_vec(),
        plain
    );
}

/// `baton ctl` takes keys on the command line or, kept off it, from a file
/// (`SUITE:@FILE`), and says which key is wrong.
#[test]
fn ctl_takes_srtp_keys_from_a_file() {
    let relay = Relay::start(&[]);
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("device.key");
    std::fs::write(&path, "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\n").expect("write");
    let srtp = format!("AES_CM_128_HMAC_SHA1_80:@{}", path.display());
    let created = common::stdout_json(&relay.ctl(&[
        "create",
        "--call-id",
        "ctl-srtp",
        "--from-tag",
        "a",
        "--aor",
        AOR,
        "--gruu",
        GRUU_A,
        "--stream",
        "audio:0",
        "--user-peer",
        "127.0.0.1:4000",
        "--user-srtp",
        &srtp,
    ]));
    let user_key = &created["streams"][0]["user_key"];
    assert_eq!(user_key["suite"], "AES_CM_128_HMAC_SHA1_80", "{created}");
    assert_eq!(
        decode_base64(user_key["key"].as_str().expect("base64")).map(|k| k.len()),
        Some(30)
    );
    let session = created["session"].as_str().expect("id");
    let refused = relay.ctl(&[
        "update",
        "--session",
        session,
        "--user-key",
        "AES_CM_128_HMAC_SHA1_80:not*base64",
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not base64"));
    let short = relay.ctl(&[
        "update",
        "--session",
        session,
        "--user-key",
        "AES_CM_128_HMAC_SHA1_80:c2hvcnQ=",
    ]);
    assert!(!short.status.success());
    assert!(
        String::from_utf8_lossy(&short.stderr).contains("30 bytes"),
        "{}",
        String::from_utf8_lossy(&short.stderr)
    );
}

/// A plain remote restarts its sequence numbers on the same SSRC (a PBX
/// on hold and resume, or on its own transfer). Toward an SRTP device the
/// relay continues them, so the device's SRTP, with its replay check on,
/// accepts every packet after the restart (rtpengine's #1483, where the
/// device dropped everything); the device's receiver report goes back to
/// the remote in the remote's own numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_that_restarts_its_numbers_is_still_heard_by_an_srtp_device() {
    use webrtc_util::marshal::{Marshal, Unmarshal};
    let relay = Relay::start(&[]);
    let client = relay.client().await;
    let a_key = key("AES_CM_128_HMAC_SHA1_80", 0x0a);
    let mut a = Device::new(Some(&a_key), 0xA, 1);
    let remote = Peer::v4();
    let created = create(
        &client,
        v1::CreateSessionRequest {
            call_id: "remote-restart".into(),
            from_tag: "a".into(),
            aor: AOR.into(),
            gruu: GRUU_A.into(),
            streams: vec![v1::StreamSpec {
                kind: "audio".into(),
                codecs: vec![pcmu()],
                rtcp_mux: true,
                user_peer: Some(endpoint(a.peer.addr())),
                remote_peer: Some(endpoint(remote.addr())),
                user_srtp: leg_srtp(&a_key.suite, &a_key),
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    .await;
    let stream = &created.streams[0];
    a.attach(stream);
    let remote_relay = stream.remote.as_ref().expect("remote").rtp.clone();
    let relay_key = a.srtp.as_ref().map(|(_, k)| k.clone()).expect("key");
    // One context for the whole call, as a phone has: replay check on.
    let mut device_rx = context(&relay_key);
    let mut heard = Vec::new();
    for seq in (5000..5010u16).chain(20..30) {
        let plain = rtp(0, seq, u32::from(seq) * 160, 0xF, &[seq as u8; 160]);
        remote.send(&remote_relay, &plain);
        let (wire, _) = a.peer.recv();
        let got = device_rx
            .decrypt_rtp(&Bytes::from(wire))
            .unwrap_or_else(|e| panic!("the device refused seq {seq}: {e}"));
        assert_eq!(&got[12..], &plain[12..], "the payload");
        heard.push(u16::from_be_bytes([got[2], got[3]]));
    }
    assert_eq!(
        heard,
        (5000..5020).collect::<Vec<u16>>(),
        "one run of numbers"
    );
    // The device reports about the remote's stream: highest 5019 as it saw it.
    let rr = rtcp::receiver_report::ReceiverReport {
        ssrc: 0xA,
        reports: vec![rtcp::reception_report::ReceptionReport {
            ssrc: 0xF,
            last_sequence_number: 5019,
            ..Default::default()
        }],
        ..Default::default()
    }
    .marshal()
    .expect("marshal");
    let (ctx, _) = a.srtp.as_mut().expect("srtp");
    a.peer
        .send(&a.relay, &ctx.encrypt_rtcp(&rr).expect("encrypt"));
    let (mut plain, _) = remote.recv();
    let mut bytes = Bytes::from(std::mem::take(&mut plain));
    let report = rtcp::receiver_report::ReceiverReport::unmarshal(&mut bytes).expect("an RR");
    assert_eq!(
        report.reports[0].last_sequence_number, 29,
        "in the remote's own numbers"
    );
}

/// RFC 4568 rejects an SRTP line none of whose keys can be used, and
/// only that line: in a first body (here the request's options exclude its
/// only suite, and the plain line of a best-effort offer carries the call)
/// and in a re-offer (its line goes to the other party with port 0, the
/// rest of the body applies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_srtp_lines_are_rejected_and_only_they() {
    let relay = Relay::start(&[]);
    let client = relay.client().await;
    let k = encode_base64(&[5; 30]);
    let best_effort = format!(
        "v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{k}\r\n\
         m=audio 4002 RTP/AVP 0\r\n"
    );
    let created = create(
        &client,
        v1::CreateSessionRequest {
            call_id: "reject-srtp-line".into(),
            from_tag: "a".into(),
            aor: AOR.into(),
            gruu: GRUU_A.into(),
            sdp: best_effort,
            sdes: Some(v1::SdesOptions {
                exclude: vec!["AES_CM_128_HMAC_SHA1_80".into()],
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    let body = Sdp::parse(&created.sdp).expect("sdp");
    assert!(body.media(0).expect("m").is_disabled(), "{}", created.sdp);
    assert!(!body.media(1).expect("m").is_disabled(), "{}", created.sdp);
    assert!(!created.sdp.contains("a=crypto"), "{}", created.sdp);

    // An SRTP call whose phone re-offers with a key baton cannot honour
    // (an MKI) on its line: that line is rejected, nothing fails.
    let phone = Peer::v4();
    let offer = srtp_body(
        "127.0.0.1",
        phone.addr().port(),
        "RTP/SAVP",
        &[format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k}")],
    );
    let call = create(
        &client,
        v1::CreateSessionRequest {
            call_id: "reject-on-reoffer".into(),
            from_tag: "a".into(),
            aor: AOR.into(),
            gruu: GRUU_A.into(),
            sdp: offer,
            other_transport: "RTP/AVP".into(),
            ..Default::default()
        },
    )
    .await;
    update(
        &client,
        v1::UpdateSessionRequest {
            session: by_id(&call.session),
            to_tag: "c".into(),
            sdp: srtp_body("127.0.0.1", 4100, "RTP/AVP", &[]),
            ..Default::default()
        },
    )
    .await;
    let reoffer = srtp_body(
        "127.0.0.1",
        phone.addr().port(),
        "RTP/SAVP",
        &[format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k}|2^31|1:4")],
    );
    let updated = update(
        &client,
        v1::UpdateSessionRequest {
            session: by_id(&call.session),
            sdp: reoffer,
            sdp_from: v1::Party::User as i32,
            ..Default::default()
        },
    )
    .await;
    let body = Sdp::parse(&updated.sdp).expect("sdp");
    assert!(body.media(0).expect("m").is_disabled(), "{}", updated.sdp);
    assert!(!updated.sdp.contains("a=crypto"), "{}", updated.sdp);
}

/// Issue 19: the recording of an SRTP call is in the clear — what the
/// remote got, decrypted — started and stopped with the native `record`.
#[tokio::test]
async fn an_srtp_call_is_recorded_in_the_clear() {
    let dir = tempfile::tempdir().expect("dir");
    let relay = Relay::start(&["--recording-dir", &dir.path().to_string_lossy()]);
    let client = relay.client().await;
    let a_key = key("AES_CM_128_HMAC_SHA1_80", 0xa1);
    let remote_key = key("AEAD_AES_128_GCM", 0x33);
    let mut a = Device::new(Some(&a_key), 0xA, 100);
    let (session, mut remote) =
        srtp_call(&client, "srtp-recorded", &mut a, &a_key, &remote_key).await;
    let record = |action: v1::RecordAction| {
        Command::Record(v1::RecordRequest {
            session: by_id(&session),
            action: action as i32,
        })
    };
    let Ok(Reply::Record(started)) = client.call(record(v1::RecordAction::RecordStart)).await
    else {
        panic!("record");
    };
    assert!(started.file.ends_with(".pcap"), "{started:?}");
    for _ in 0..10 {
        a.send_packet();
        remote.receive();
    }
    let Ok(Reply::Record(stopped)) = client.call(record(v1::RecordAction::RecordStop)).await else {
        panic!("record");
    };
    assert!(stopped.file.ends_with(".json"), "{stopped:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::path::Path::new(&stopped.file).exists() {
        assert!(std::time::Instant::now() < deadline, "no metadata");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let pcap = std::fs::read(&started.file).expect("pcap");
    // The device's payload, 160 bytes of 0xd5, as the remote got it after
    // decryption: in the file ten times, in the clear.
    let clear = pcap
        .windows(160)
        .filter(|w| w.iter().all(|&b| b == 0xd5))
        .count();
    assert!(clear >= 10, "{clear} clear payloads");
}
