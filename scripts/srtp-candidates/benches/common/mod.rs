//! The relay's per-packet work for each candidate SRTP library, shared by the
//! `candidates` benchmark and the `alloc_per_packet` example.

use baton_relay::core::srtp::{MAX_OVERHEAD, MasterKey, SrtpReceiver, SrtpSender, Suite};

/// RTP header (12) + payload (160): 20 ms of G.711.
pub const PLAIN_LEN: usize = 12 + 160;
/// The SSRC the relay writes on the outbound leg.
pub const OUT_SSRC: u32 = 0x0b0b_0b0b;
/// Spare room every buffer carries, so no candidate has to grow it.
pub const CAPACITY: usize = 512;

/// Suites compared.
pub const SUITES: [Suite; 2] = [Suite::AesCm128HmacSha1_80, Suite::AeadAes128Gcm];

/// What the relay does to each packet: unprotect with the inbound key (with replay
/// protection), rewrite the header, protect with the outbound key. `packet` holds one
/// inbound SRTP packet and ends holding the outbound one.
pub trait Candidate {
    /// Relays one packet.
    fn relay(&mut self, packet: &mut Vec<u8>);
}

/// The header rewrite: the relay's own SSRC on the outbound leg.
fn rewrite(plain: &mut [u8]) {
    if let Some(ssrc) = plain.get_mut(8..12) {
        ssrc.copy_from_slice(&OUT_SSRC.to_be_bytes());
    }
}

/// Ours, in place.
pub struct Ours {
    rx: SrtpReceiver,
    tx: SrtpSender,
}

impl Ours {
    /// From the inbound and outbound master keys.
    pub fn new(inbound: &MasterKey, outbound: &MasterKey) -> Self {
        Ours {
            rx: SrtpReceiver::new(inbound),
            tx: SrtpSender::new(outbound),
        }
    }
}

impl Candidate for Ours {
    fn relay(&mut self, packet: &mut Vec<u8>) {
        let len = packet.len();
        packet.resize(len + MAX_OVERHEAD, 0); // within capacity: no allocation
        let accepted = self.rx.unprotect_rtp(packet, len).expect("ours unprotect");
        self.rx.commit(&accepted);
        rewrite(packet);
        let out = self
            .tx
            .protect_rtp(packet, accepted.len())
            .expect("ours protect");
        packet.truncate(out);
    }
}

/// webrtc-srtp 0.17: `Context::decrypt_rtp` / `encrypt_rtp`, which return new `Bytes`.
pub struct WebRtc {
    rx: webrtc_srtp::context::Context,
    tx: webrtc_srtp::context::Context,
}

fn webrtc_context(key: &MasterKey, replay: bool) -> webrtc_srtp::context::Context {
    use webrtc_srtp::protection_profile::ProtectionProfile;
    let profile = match key.suite() {
        Suite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        Suite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
        Suite::AesCm256HmacSha1_80 => ProtectionProfile::Aes256CmHmacSha1_80,
        Suite::AesCm256HmacSha1_32 => ProtectionProfile::Aes256CmHmacSha1_32,
        Suite::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
        Suite::AeadAes256Gcm => ProtectionProfile::AeadAes256Gcm,
    };
    let (k, s) = key.key_and_salt().split_at(key.suite().key_len());
    let replay = replay.then(|| webrtc_srtp::option::srtp_replay_protection(128));
    webrtc_srtp::context::Context::new(k, s, profile, replay, None).expect("webrtc-srtp context")
}

impl WebRtc {
    /// From the inbound and outbound master keys; replay protection on inbound.
    pub fn new(inbound: &MasterKey, outbound: &MasterKey) -> Self {
        WebRtc {
            rx: webrtc_context(inbound, true),
            tx: webrtc_context(outbound, false),
        }
    }
}

impl Candidate for WebRtc {
    fn relay(&mut self, packet: &mut Vec<u8>) {
        let plain = self.rx.decrypt_rtp(packet).expect("webrtc decrypt_rtp");
        // `Bytes` is immutable: rewrite in a stack copy (no allocation of our own).
        let mut scratch = [0u8; CAPACITY];
        let scratch = &mut scratch[..plain.len()];
        scratch.copy_from_slice(&plain);
        rewrite(scratch);
        let out = self.tx.encrypt_rtp(scratch).expect("webrtc encrypt_rtp");
        packet.clear();
        packet.extend_from_slice(&out); // within capacity
    }
}

/// libsrtp 2 (the system libsrtp2) through the `srtp` crate, in place in a `Vec`
/// with spare capacity.
pub struct LibSrtp {
    rx: srtp::Session,
    tx: srtp::Session,
}

fn libsrtp_policy(suite: Suite) -> srtp::CryptoPolicy {
    use srtp::CryptoPolicy;
    match suite {
        Suite::AesCm128HmacSha1_80 => CryptoPolicy::aes_cm_128_hmac_sha1_80(),
        Suite::AesCm128HmacSha1_32 => CryptoPolicy::aes_cm_128_hmac_sha1_32(),
        Suite::AesCm256HmacSha1_80 => CryptoPolicy::aes_cm_256_hmac_sha1_80(),
        Suite::AesCm256HmacSha1_32 => CryptoPolicy::aes_cm_256_hmac_sha1_32(),
        Suite::AeadAes128Gcm => CryptoPolicy::aes_gcm_128_16_auth(),
        Suite::AeadAes256Gcm => CryptoPolicy::aes_gcm_256_16_auth(),
    }
}

impl LibSrtp {
    /// From the inbound and outbound master keys.
    pub fn new(inbound: &MasterKey, outbound: &MasterKey) -> Self {
        // libsrtp copies the policy's key into the session on creation.
        LibSrtp {
            rx: srtp::Session::with_inbound_template(policy(inbound)).expect("libsrtp inbound"),
            tx: srtp::Session::with_outbound_template(policy(outbound)).expect("libsrtp outbound"),
        }
    }
}

fn policy(key: &MasterKey) -> srtp::StreamPolicy<'_> {
    srtp::StreamPolicy {
        rtp: libsrtp_policy(key.suite()),
        rtcp: libsrtp_policy(key.suite()),
        key: key.key_and_salt(),
        ..srtp::StreamPolicy::default()
    }
}

impl Candidate for LibSrtp {
    fn relay(&mut self, packet: &mut Vec<u8>) {
        self.rx.unprotect(packet).expect("libsrtp unprotect");
        rewrite(packet);
        self.tx.protect(packet).expect("libsrtp protect");
    }
}

/// The peer: produces fresh inbound SRTP packets (new sequence numbers, so replay
/// protection never refuses them).
pub struct Peer {
    tx: SrtpSender,
    seq: u16,
}

impl Peer {
    /// A peer sending with `inbound`.
    pub fn new(inbound: &MasterKey) -> Self {
        Peer {
            tx: SrtpSender::new(inbound),
            seq: 1000,
        }
    }

    /// The next inbound packet, in a buffer with `CAPACITY` bytes of capacity.
    pub fn next(&mut self) -> Vec<u8> {
        let mut packet = Vec::with_capacity(CAPACITY);
        packet.extend_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0x0a, 0x0a, 0x0a, 0x0a]);
        packet[2..4].copy_from_slice(&self.seq.to_be_bytes());
        packet[4..8].copy_from_slice(&(u32::from(self.seq) * 160).to_be_bytes());
        packet.extend((0..160).map(|i| (i as u8) ^ (self.seq as u8)));
        packet.resize(PLAIN_LEN + MAX_OVERHEAD, 0);
        let len = self
            .tx
            .protect_rtp(&mut packet, PLAIN_LEN)
            .expect("peer protect");
        packet.truncate(len);
        self.seq = self.seq.wrapping_add(1);
        packet
    }
}

/// Inbound and outbound keys for `suite`, fixed so runs compare.
pub fn keys(suite: Suite) -> (MasterKey, MasterKey) {
    let n = suite.master_len();
    let inbound: Vec<u8> = (0..n as u8).collect();
    let outbound: Vec<u8> = (0..n as u8).map(|b| b ^ 0x5a).collect();
    (
        MasterKey::new(suite, &inbound).expect("inbound key"),
        MasterKey::new(suite, &outbound).expect("outbound key"),
    )
}

/// Checks a candidate's output opens with our receiver and the outbound key.
pub fn check(candidate: &mut dyn Candidate, suite: Suite) {
    let (inbound, outbound) = keys(suite);
    let mut peer = Peer::new(&inbound);
    let mut far_end = SrtpReceiver::new(&outbound);
    for _ in 0..3 {
        let mut packet = peer.next();
        candidate.relay(&mut packet);
        let len = packet.len();
        let accepted = far_end
            .unprotect_rtp(&mut packet, len)
            .expect("relayed packet opens");
        far_end.commit(&accepted);
        assert_eq!(accepted.len(), PLAIN_LEN);
        assert_eq!(accepted.ssrc(), OUT_SSRC);
    }
}
