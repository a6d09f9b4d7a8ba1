//! SRTP and SRTCP, in place and without allocation.
//!
//! Implements RFC 3711 (AES-CM with HMAC-SHA1), RFC 6188 (AES-256 counter mode) and
//! RFC 7714 (AEAD AES-GCM) on RustCrypto primitives, with key derivation rate 0 and no
//! MKI, which is all baton negotiates.
//!
//! The relay decrypts and re-encrypts every packet, so the per-packet paths never
//! allocate, lock or panic: every buffer access is bounds-checked, all state lives in
//! small fixed tables and keys are expanded once per session.
//!
//! Receiving takes two steps. [`SrtpReceiver::unprotect_rtp`] and
//! [`SrtpReceiver::unprotect_rtcp`] authenticate and decrypt without changing any state;
//! [`SrtpReceiver::commit`] then records the packet once the caller has accepted it for
//! its own reasons too (such as the source address). A packet that is forged, replayed
//! or from the wrong address thus never moves the replay window or the rollover counter.

use std::fmt;

use aes::cipher::{BlockEncrypt, InnerIvInit, KeyInit, StreamCipher, StreamCipherCoreWrapper};
use aes::{Aes128, Aes256};
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, Aes256Gcm, Nonce, Tag};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha1::Sha1;
use subtle::ConstantTimeEq;

/// Fixed RTP header before CSRCs (RFC 3550 §5.1).
const RTP_HEADER_LEN: usize = 12;
/// RTCP header up to and including the sender SSRC, which SRTCP leaves in clear.
const RTCP_HEADER_LEN: usize = 8;
/// The SRTCP `E || index` word.
const SRTCP_INDEX_LEN: usize = 4;
/// HMAC-SHA1 output and session authentication key length (RFC 3711 §8.2: n_a = 160).
const AUTH_KEY_LEN: usize = 20;
/// AES-CM session salt (112 bits).
const CM_SALT_LEN: usize = 14;
/// AEAD session salt (96 bits, RFC 7714 §12).
const GCM_SALT_LEN: usize = 12;
/// AES-GCM tag (RFC 7714 uses the full 16 octets).
const GCM_TAG_LEN: usize = 16;
/// Longest master key plus salt (AES-256 key, 14-byte salt).
const MAX_MASTER_LEN: usize = 32 + CM_SALT_LEN;
/// Packets tracked behind the highest index, per SSRC (a `u128` bitmap).
const REPLAY_WINDOW: u64 = 128;
/// SSRC slots per receiver and per sender.
///
/// A peer sends few SSRCs (audio, video, RTX, FEC, a few simulcast layers); when a
/// ninth appears the least recently used one is forgotten, see [`SrtpReceiver`].
const SSRC_SLOTS: usize = 8;
/// SRTCP `E` flag: the payload is encrypted.
const E_FLAG: u32 = 0x8000_0000;
/// SRTCP index is 31 bits.
const SRTCP_INDEX_MASK: u32 = 0x7fff_ffff;

// Key derivation labels (RFC 3711 §4.3.2).
const LABEL_RTP_ENCRYPTION: u8 = 0x00;
const LABEL_RTP_AUTH: u8 = 0x01;
const LABEL_RTP_SALT: u8 = 0x02;
const LABEL_RTCP_ENCRYPTION: u8 = 0x03;
const LABEL_RTCP_AUTH: u8 = 0x04;
const LABEL_RTCP_SALT: u8 = 0x05;

/// An SRTP crypto suite, named as in SDP (RFC 4568, RFC 6188, RFC 7714).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suite {
    /// `AES_CM_128_HMAC_SHA1_80`: AES-128 counter mode, 80-bit HMAC-SHA1 tag.
    AesCm128HmacSha1_80,
    /// `AES_CM_128_HMAC_SHA1_32`: as above with a 32-bit tag on RTP (80 bits on RTCP).
    AesCm128HmacSha1_32,
    /// `AES_256_CM_HMAC_SHA1_80`: AES-256 counter mode, 80-bit HMAC-SHA1 tag.
    AesCm256HmacSha1_80,
    /// `AES_256_CM_HMAC_SHA1_32`: as above with a 32-bit tag on RTP (80 bits on RTCP).
    AesCm256HmacSha1_32,
    /// `AEAD_AES_128_GCM`: AES-128 GCM with a 16-byte tag.
    AeadAes128Gcm,
    /// `AEAD_AES_256_GCM`: AES-256 GCM with a 16-byte tag.
    AeadAes256Gcm,
}

impl Suite {
    /// Every suite, most preferred first: the widely deployed 128-bit AES-CM suites,
    /// then GCM, then AES-256 counter mode.
    pub const ALL: [Suite; 6] = [
        Suite::AesCm128HmacSha1_80,
        Suite::AesCm128HmacSha1_32,
        Suite::AeadAes128Gcm,
        Suite::AeadAes256Gcm,
        Suite::AesCm256HmacSha1_80,
        Suite::AesCm256HmacSha1_32,
    ];

    /// The SDP crypto-suite name.
    pub const fn name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            Suite::AesCm256HmacSha1_80 => "AES_256_CM_HMAC_SHA1_80",
            Suite::AesCm256HmacSha1_32 => "AES_256_CM_HMAC_SHA1_32",
            Suite::AeadAes128Gcm => "AEAD_AES_128_GCM",
            Suite::AeadAes256Gcm => "AEAD_AES_256_GCM",
        }
    }

    /// The suite with this exact SDP name (case-sensitive, as the RFC 4568 grammar is).
    pub fn from_name(name: &str) -> Option<Suite> {
        Suite::ALL.into_iter().find(|suite| suite.name() == name)
    }

    /// Master (and session) encryption key length in bytes: 16 or 32.
    pub const fn key_len(self) -> usize {
        match self {
            Suite::AesCm128HmacSha1_80 | Suite::AesCm128HmacSha1_32 | Suite::AeadAes128Gcm => 16,
            Suite::AesCm256HmacSha1_80 | Suite::AesCm256HmacSha1_32 | Suite::AeadAes256Gcm => 32,
        }
    }

    /// Master salt length in bytes: 14 for AES-CM, 12 for GCM.
    pub const fn salt_len(self) -> usize {
        if self.is_aead() {
            GCM_SALT_LEN
        } else {
            CM_SALT_LEN
        }
    }

    /// Master key plus master salt, the length of the `inline:` key in `a=crypto`.
    pub const fn master_len(self) -> usize {
        self.key_len() + self.salt_len()
    }

    /// Bytes [`SrtpSender::protect_rtp`] appends: the tag (10, 4 or 16).
    pub const fn rtp_overhead(self) -> usize {
        match self {
            Suite::AesCm128HmacSha1_80 | Suite::AesCm256HmacSha1_80 => 10,
            Suite::AesCm128HmacSha1_32 | Suite::AesCm256HmacSha1_32 => 4,
            Suite::AeadAes128Gcm | Suite::AeadAes256Gcm => GCM_TAG_LEN,
        }
    }

    /// Bytes [`SrtpSender::protect_rtcp`] appends: the `E || index` word and the tag.
    ///
    /// SRTCP always carries an 80-bit HMAC tag, also for the `_32` suites
    /// (RFC 4568 §6.2.1, RFC 3711 §5.2).
    pub const fn rtcp_overhead(self) -> usize {
        SRTCP_INDEX_LEN + self.rtcp_tag_len()
    }

    const fn is_aead(self) -> bool {
        matches!(self, Suite::AeadAes128Gcm | Suite::AeadAes256Gcm)
    }

    const fn rtcp_tag_len(self) -> usize {
        if self.is_aead() { GCM_TAG_LEN } else { 10 }
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Largest number of bytes any suite appends to a packet (SRTCP with GCM: 4 + 16), so
/// buffers can reserve it once.
pub const MAX_OVERHEAD: usize = 20;

/// Why a packet could not be protected or unprotected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtpError {
    /// Shorter than the smallest valid packet (or `len` beyond the buffer).
    TooShort,
    /// Not version 2, or the CSRC list, header extension or padding does not fit.
    Malformed,
    /// The authentication tag does not match: wrong key, corrupted or forged.
    AuthFailed,
    /// This index was already accepted (receiving), or already used (sending).
    Replayed,
    /// Behind the replay window (more than 128 packets older than the newest).
    TooOld,
    /// Sending: every SSRC slot holds another source.
    TooManySources,
    /// The buffer has no room for the tag (and SRTCP index).
    NoRoom,
    /// The master key and salt have the wrong length for the suite.
    BadKey,
}

impl SrtpError {
    /// A stable snake_case name, for metrics and logs.
    pub const fn name(self) -> &'static str {
        match self {
            SrtpError::TooShort => "too_short",
            SrtpError::Malformed => "malformed",
            SrtpError::AuthFailed => "auth_failed",
            SrtpError::Replayed => "replayed",
            SrtpError::TooOld => "too_old",
            SrtpError::TooManySources => "too_many_sources",
            SrtpError::NoRoom => "no_room",
            SrtpError::BadKey => "bad_key",
        }
    }
}

impl fmt::Display for SrtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::error::Error for SrtpError {}

/// A master key and master salt for one suite.
///
/// `Debug` shows the suite only, never the key bytes.
#[derive(Clone, Copy)]
pub struct MasterKey {
    suite: Suite,
    /// Key then salt; only the first `suite.master_len()` bytes are used.
    bytes: [u8; MAX_MASTER_LEN],
}

impl MasterKey {
    /// A master key from its wire form: key followed by salt, `suite.master_len()` bytes.
    pub fn new(suite: Suite, key_and_salt: &[u8]) -> Result<Self, SrtpError> {
        let mut bytes = [0; MAX_MASTER_LEN];
        if key_and_salt.len() != suite.master_len() {
            return Err(SrtpError::BadKey);
        }
        bytes
            .get_mut(..key_and_salt.len())
            .ok_or(SrtpError::BadKey)?
            .copy_from_slice(key_and_salt);
        Ok(MasterKey { suite, bytes })
    }

    /// A fresh random master key and salt from the thread's CSPRNG (ChaCha, seeded and
    /// periodically reseeded from the operating system).
    pub fn random(suite: Suite) -> Self {
        let mut bytes = [0; MAX_MASTER_LEN];
        if let Some(used) = bytes.get_mut(..suite.master_len()) {
            rand::rng().fill_bytes(used);
        }
        MasterKey { suite, bytes }
    }

    /// The suite this key is for.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Key followed by salt, `suite().master_len()` bytes: what `a=crypto` base64-encodes.
    pub fn key_and_salt(&self) -> &[u8] {
        self.bytes.get(..self.suite.master_len()).unwrap_or(&[])
    }

    fn key(&self) -> &[u8] {
        self.bytes.get(..self.suite.key_len()).unwrap_or(&[])
    }

    fn salt(&self) -> &[u8] {
        self.bytes
            .get(self.suite.key_len()..self.suite.master_len())
            .unwrap_or(&[])
    }
}

/// Two keys are equal when suite, key and salt are; compared in constant
/// time, as key material is.
/// Stored as its suite's name and the key and salt in hex (high
/// availability: the store must be as private as the relay's memory).
impl serde::Serialize for MasterKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let hex: String = self
            .key_and_salt()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut out = serializer.serialize_struct("MasterKey", 2)?;
        out.serialize_field("suite", self.suite().name())?;
        out.serialize_field("key", &hex)?;
        out.end()
    }
}

impl<'de> serde::Deserialize<'de> for MasterKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        #[derive(serde::Deserialize)]
        struct Stored {
            suite: String,
            key: String,
        }
        let stored = Stored::deserialize(deserializer)?;
        let suite = Suite::from_name(&stored.suite)
            .ok_or_else(|| D::Error::custom(format!("unknown SRTP suite {:?}", stored.suite)))?;
        if stored.key.len() % 2 != 0 || stored.key.len() > 2 * 64 {
            return Err(D::Error::custom("SRTP key: not hex of a key and salt"));
        }
        let bytes = (0..stored.key.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(stored.key.get(i..i + 2).unwrap_or("zz"), 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| D::Error::custom("SRTP key: not hex"))?;
        MasterKey::new(suite, &bytes).map_err(|e| D::Error::custom(format!("SRTP key: {e}")))
    }
}

impl PartialEq for MasterKey {
    fn eq(&self, other: &Self) -> bool {
        self.suite == other.suite && bool::from(self.key_and_salt().ct_eq(other.key_and_salt()))
    }
}

impl Eq for MasterKey {}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("suite", &self.suite)
            .field("key_and_salt", &"<redacted>")
            .finish()
    }
}

/// The result of a successful unprotect: the plaintext length and what
/// [`SrtpReceiver::commit`] needs to record the packet.
#[derive(Debug, Clone, Copy)]
pub struct Unprotected {
    len: usize,
    ssrc: u32,
    kind: Kind,
    /// 48-bit RTP packet index (ROC << 16 | SEQ) or 31-bit SRTCP index.
    index: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rtp,
    Rtcp,
}

impl Unprotected {
    /// Length of the plaintext packet at the start of the buffer (tag and SRTCP index
    /// removed).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the plaintext is empty (never, for a valid packet).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The SSRC the packet was authenticated for (the sender SSRC for RTCP).
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Whether this was an SRTCP packet.
    pub fn is_rtcp(&self) -> bool {
        self.kind == Kind::Rtcp
    }

    /// The 48-bit SRTP packet index (ROC << 16 | sequence number) or the 31-bit SRTCP
    /// index.
    pub fn index(&self) -> u64 {
        self.index
    }
}

/// One SSRC's highest SRTP indexes (48-bit RTP, 31-bit SRTCP), as stored
/// for high availability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SrtpIndexes {
    /// The SSRC.
    pub ssrc: u32,
    /// The highest RTP index, once one was seen.
    pub rtp: Option<u64>,
    /// The highest SRTCP index, once one was seen (receivers only).
    pub rtcp: Option<u64>,
}

/// Decrypts and authenticates what one peer sends: all its SSRCs, RTP and RTCP, with
/// replay protection.
///
/// Per-SSRC state (rollover counter, highest index and a 128-packet replay window, for
/// RTP and for RTCP) lives in a fixed table of 8 slots. When a peer uses more SSRCs,
/// committing a packet of a new one evicts the least recently committed SSRC; if that
/// SSRC comes back it starts afresh: its rollover counter is guessed as 0 again (its
/// packets fail authentication if it had wrapped) and its old packets could be
/// accepted once more.
pub struct SrtpReceiver {
    session: Session,
    streams: Table<RxState>,
}

impl SrtpReceiver {
    /// A receiver for packets protected with `key`.
    pub fn new(key: &MasterKey) -> Self {
        SrtpReceiver {
            session: Session::new(key),
            streams: Table::new(),
        }
    }

    /// A receiver for a new `key` that goes on from `old`'s rollover
    /// counters and replay windows: for a peer that re-keys its existing
    /// streams in place (libsrtp's `srtp_update`) rather than starting them
    /// afresh.
    pub fn continuing(key: &MasterKey, old: &SrtpReceiver) -> Self {
        SrtpReceiver {
            session: Session::new(key),
            streams: old.streams.clone(),
        }
    }

    /// Per SSRC: the highest RTP and SRTCP indexes accepted, for another
    /// relay process to go on from (high availability).
    pub fn highest_indexes(&self) -> Vec<SrtpIndexes> {
        self.streams
            .entries
            .iter()
            .flatten()
            .map(|entry| SrtpIndexes {
                ssrc: entry.ssrc,
                rtp: entry.state.rtp.map(|w| w.top),
                rtcp: entry.state.rtcp.map(|w| w.top),
            })
            .collect()
    }

    /// Goes on from `indexes` (see [`highest_indexes`](Self::highest_indexes)):
    /// each SSRC's rollover counter is known again, and its packets up to
    /// those indexes count as seen.
    pub fn resume_from(&mut self, indexes: &[SrtpIndexes]) {
        for entry in indexes.iter().take(SSRC_SLOTS) {
            let state = self.streams.touch(entry.ssrc);
            state.rtp = entry.rtp.map(Window::resumed);
            state.rtcp = entry.rtcp.map(Window::resumed);
        }
    }

    /// Authenticates and decrypts the SRTP packet in `buf[..len]` in place.
    ///
    /// Checks the replay window but changes no state: call [`commit`](Self::commit) if
    /// the packet is accepted. Returns the plaintext length (`len` minus the tag) and
    /// the token for `commit`. A packet refused for its replay index or tag is left as
    /// received (the tag is checked before anything is decrypted).
    pub fn unprotect_rtp(&self, buf: &mut [u8], len: usize) -> Result<Unprotected, SrtpError> {
        let packet = buf.get_mut(..len).ok_or(SrtpError::TooShort)?;
        let tag_len = self.session.suite.rtp_overhead();
        let body_len = len
            .checked_sub(tag_len)
            .filter(|body| *body >= RTP_HEADER_LEN)
            .ok_or(SrtpError::TooShort)?;
        let header_len = rtp_header_len(packet.get(..body_len).ok_or(SrtpError::TooShort)?)?;
        let seq = read_u16(packet, 2)?;
        let ssrc = read_u32(packet, 8)?;

        // RFC 3711 §3.3.1: the first packet of an SSRC has ROC 0 and sets s_l.
        let index = match self.streams.get(ssrc).and_then(|state| state.rtp) {
            Some(window) => {
                let index = guess_index(window.top, seq).ok_or(SrtpError::TooOld)?;
                window.check(index)?;
                index
            }
            None => u64::from(seq),
        };
        let plain_len = self.session.rtp.open_rtp(packet, header_len, ssrc, index)?;
        check_padding(
            packet.get(..plain_len).ok_or(SrtpError::TooShort)?,
            header_len,
        )?;
        Ok(Unprotected {
            len: plain_len,
            ssrc,
            kind: Kind::Rtp,
            index,
        })
    }

    /// Authenticates and, if its `E` flag is set, decrypts the (compound) SRTCP packet
    /// in `buf[..len]` in place.
    ///
    /// Like [`unprotect_rtp`](Self::unprotect_rtp) this changes no state. Returns the
    /// RTCP length (`len` minus the index word and tag).
    pub fn unprotect_rtcp(&self, buf: &mut [u8], len: usize) -> Result<Unprotected, SrtpError> {
        let packet = buf.get_mut(..len).ok_or(SrtpError::TooShort)?;
        let suite = self.session.suite;
        let trailer = suite.rtcp_overhead();
        if len < RTCP_HEADER_LEN + trailer {
            return Err(SrtpError::TooShort);
        }
        check_version(packet)?;
        let ssrc = read_u32(packet, 4)?;
        // The index word follows the packet for AES-CM (RFC 3711 §3.4) but the tag for
        // GCM (RFC 7714 §9.1).
        let word_at = if suite.is_aead() {
            len - SRTCP_INDEX_LEN
        } else {
            len - trailer
        };
        let word = read_u32(packet, word_at)?;
        let index = word & SRTCP_INDEX_MASK;
        if let Some(window) = self.streams.get(ssrc).and_then(|state| state.rtcp) {
            window.check(u64::from(index))?;
        }
        let plain_len = self.session.rtcp.open_rtcp(packet, ssrc, word)?;
        Ok(Unprotected {
            len: plain_len,
            ssrc,
            kind: Kind::Rtcp,
            index: u64::from(index),
        })
    }

    /// Records an accepted packet: advances the SSRC's highest index (and so its ROC)
    /// and marks the index in the replay window, creating the SSRC's state if new.
    pub fn commit(&mut self, accepted: &Unprotected) {
        let state = self.streams.touch(accepted.ssrc);
        let window = match accepted.kind {
            Kind::Rtp => &mut state.rtp,
            Kind::Rtcp => &mut state.rtcp,
        };
        match window {
            Some(window) => window.accept(accepted.index),
            None => *window = Some(Window::new(accepted.index)),
        }
    }
}

impl fmt::Debug for SrtpReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtpReceiver")
            .field("suite", &self.session.suite)
            .finish_non_exhaustive()
    }
}

/// Encrypts and authenticates what baton sends to one peer.
///
/// Keeps, per SSRC in a fixed table of 8 slots, the rollover counter and a window of
/// the indexes already sent: an index is never encrypted twice (that would reuse
/// AES-CM keystream, or a GCM nonce, and leak plaintext or the GHASH key), so a
/// packet whose index was used already, or lies behind the window, is refused
/// ([`SrtpError::Replayed`], [`SrtpError::TooOld`]), and so is a ninth SSRC
/// ([`SrtpError::TooManySources`]) rather than forgetting one whose indexes could
/// then come round again. One SRTCP index is shared by all SSRCs.
pub struct SrtpSender {
    session: Session,
    streams: Table<TxState>,
    /// Next SRTCP index (RFC 3711 §3.4: starts at 0, 31 bits).
    srtcp_index: u32,
}

impl SrtpSender {
    /// A sender protecting with `key`.
    pub fn new(key: &MasterKey) -> Self {
        SrtpSender {
            session: Session::new(key),
            streams: Table::new(),
            srtcp_index: 0,
        }
    }

    /// Moves the next SRTCP index up to `index` (never back): senders that
    /// share a key on one transport (BUNDLE) start in disjoint index
    /// ranges, so no SSRC and index ever come twice under that key.
    pub fn start_srtcp_index_at(&mut self, index: u32) {
        let index = index & SRTCP_INDEX_MASK;
        if index > self.srtcp_index {
            self.srtcp_index = index;
        }
    }

    /// Per SSRC, the highest RTP index sent, and the next SRTCP index: what
    /// another relay process needs to never encrypt an index twice.
    pub fn highest_indexes(&self) -> (Vec<SrtpIndexes>, u32) {
        let rtp = self
            .streams
            .entries
            .iter()
            .flatten()
            .map(|entry| SrtpIndexes {
                ssrc: entry.ssrc,
                rtp: entry.state.sent.map(|w| w.top),
                rtcp: None,
            })
            .collect();
        (rtp, self.srtcp_index)
    }

    /// Goes on from `indexes` and `srtcp_index` (see
    /// [`highest_indexes`](Self::highest_indexes)): every index up to each
    /// SSRC's highest counts as sent. The SRTCP index moves `srtcp_margin`
    /// past the stored one, for reports sent after it was stored.
    pub fn resume_from(&mut self, indexes: &[SrtpIndexes], srtcp_index: u32, srtcp_margin: u32) {
        for entry in indexes.iter().take(SSRC_SLOTS) {
            if let (Some(top), Some(state)) = (entry.rtp, self.streams.find_or_add(entry.ssrc)) {
                state.sent = Some(Window::resumed(top));
            }
        }
        self.start_srtcp_index_at(srtcp_index.saturating_add(srtcp_margin));
    }

    /// A sender for a new `key` that goes on from `old`'s rollover
    /// counters, as a peer re-keying in place does (tests play that peer).
    #[cfg(test)]
    pub(crate) fn continuing(key: &MasterKey, old: &SrtpSender) -> Self {
        SrtpSender {
            session: Session::new(key),
            streams: old.streams.clone(),
            srtcp_index: old.srtcp_index,
        }
    }

    /// Protects the RTP packet in `buf[..len]` in place and returns the new length.
    ///
    /// `buf.len()` must be at least `len + suite.rtp_overhead()`, else
    /// [`SrtpError::NoRoom`]. A new SSRC starts at ROC 0; the ROC advances when the
    /// sequence number wraps forward (also across a few lost packets), and a sequence
    /// number slightly behind the highest (a reordered or retransmitted packet) uses
    /// the ROC it was sent with, as RFC 3711 Appendix A guesses it.
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let suite = self.session.suite;
        if len
            .checked_add(suite.rtp_overhead())
            .is_none_or(|total| total > buf.len())
        {
            return Err(SrtpError::NoRoom);
        }
        let packet = buf.get(..len).ok_or(SrtpError::NoRoom)?;
        let header_len = rtp_header_len(packet)?;
        check_padding(packet, header_len)?;
        let seq = read_u16(packet, 2)?;
        let ssrc = read_u32(packet, 8)?;

        let state = self
            .streams
            .find_or_add(ssrc)
            .ok_or(SrtpError::TooManySources)?;
        let index = match &state.sent {
            None => u64::from(seq),
            Some(sent) => {
                // Behind the stream's first packet across a wrap there is no ROC -1.
                let index = guess_index(sent.top, seq).ok_or(SrtpError::TooOld)?;
                sent.check(index)?;
                index
            }
        };
        let total = self
            .session
            .rtp
            .seal_rtp(buf, len, header_len, ssrc, index)?;
        // Recorded only once it went out.
        state
            .sent
            .get_or_insert_with(|| Window::new(index))
            .accept(index);
        Ok(total)
    }

    /// Protects the (compound) RTCP packet in `buf[..len]` in place and returns the new
    /// length. Always encrypts (`E` = 1); the SRTCP index continues across calls and
    /// SSRCs and wraps after 2^31 packets (rekey long before).
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let suite = self.session.suite;
        if len
            .checked_add(suite.rtcp_overhead())
            .is_none_or(|total| total > buf.len())
        {
            return Err(SrtpError::NoRoom);
        }
        let packet = buf.get(..len).ok_or(SrtpError::NoRoom)?;
        if len < RTCP_HEADER_LEN {
            return Err(SrtpError::TooShort);
        }
        check_version(packet)?;
        let ssrc = read_u32(packet, 4)?;
        let index = self.srtcp_index;
        let total = self.session.rtcp.seal_rtcp(buf, len, ssrc, index)?;
        self.srtcp_index = index.wrapping_add(1) & SRTCP_INDEX_MASK;
        Ok(total)
    }
}

impl fmt::Debug for SrtpSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtpSender")
            .field("suite", &self.session.suite)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------
// Per-SSRC state
// ---------------------------------------------------------------------------

/// Highest accepted index and which of the 128 indexes below it were seen.
#[derive(Debug, Clone, Copy)]
struct Window {
    top: u64,
    /// Bit `n` set: index `top - n` was accepted.
    seen: u128,
}

impl Window {
    fn new(index: u64) -> Self {
        Window {
            top: index,
            seen: 1,
        }
    }

    /// A window stored elsewhere, known only by its top: everything in it
    /// counts as seen (refusing a late packet beats accepting one twice).
    fn resumed(top: u64) -> Self {
        Window {
            top,
            seen: u128::MAX,
        }
    }

    fn check(&self, index: u64) -> Result<(), SrtpError> {
        match self.top.checked_sub(index) {
            None => Ok(()),
            Some(behind) if behind >= REPLAY_WINDOW => Err(SrtpError::TooOld),
            Some(behind) => {
                if self.seen.checked_shr(shift(behind)).unwrap_or(0) & 1 == 1 {
                    Err(SrtpError::Replayed)
                } else {
                    Ok(())
                }
            }
        }
    }

    fn accept(&mut self, index: u64) {
        match index.checked_sub(self.top) {
            // Not newer: mark it if still inside the window (a late commit may not be).
            None | Some(0) => {
                let behind = self.top.wrapping_sub(index);
                if behind < REPLAY_WINDOW {
                    self.seen |= 1u128.checked_shl(shift(behind)).unwrap_or(0);
                }
            }
            Some(ahead) => {
                let kept = if ahead < REPLAY_WINDOW {
                    self.seen.checked_shl(shift(ahead)).unwrap_or(0)
                } else {
                    0
                };
                self.seen = kept | 1;
                self.top = index;
            }
        }
    }
}

/// A window distance as a shift count; callers pass values below 128.
fn shift(distance: u64) -> u32 {
    u32::try_from(distance).unwrap_or(u32::MAX)
}

#[derive(Debug, Clone, Copy, Default)]
struct RxState {
    rtp: Option<Window>,
    rtcp: Option<Window>,
}

#[derive(Debug, Clone, Copy, Default)]
struct TxState {
    /// The 48-bit indexes sent; `None` until the first packet.
    sent: Option<Window>,
}

#[derive(Debug, Clone, Copy)]
struct Entry<T> {
    ssrc: u32,
    last_used: u64,
    state: T,
}

/// A fixed-size SSRC map with least-recently-used eviction; lookups scan 8 slots.
#[derive(Debug, Clone)]
struct Table<T> {
    entries: [Option<Entry<T>>; SSRC_SLOTS],
    clock: u64,
}

impl<T: Copy + Default> Table<T> {
    fn new() -> Self {
        Table {
            entries: [None; SSRC_SLOTS],
            clock: 0,
        }
    }

    fn get(&self, ssrc: u32) -> Option<&T> {
        self.entries
            .iter()
            .flatten()
            .find(|entry| entry.ssrc == ssrc)
            .map(|entry| &entry.state)
    }

    /// The state for `ssrc`, created in a free slot if absent; `None` when every slot
    /// holds another SSRC (nothing is evicted).
    fn find_or_add(&mut self, ssrc: u32) -> Option<&mut T> {
        let at = self
            .entries
            .iter()
            .position(|slot| matches!(slot, Some(entry) if entry.ssrc == ssrc))
            .or_else(|| self.entries.iter().position(Option::is_none))?;
        let entry = self.entries.get_mut(at)?.get_or_insert(Entry {
            ssrc,
            last_used: 0,
            state: T::default(),
        });
        Some(&mut entry.state)
    }

    /// The state for `ssrc`, marked as just used; created if absent, in a free slot or
    /// else in place of the least recently used SSRC.
    fn touch(&mut self, ssrc: u32) -> &mut T {
        self.clock = self.clock.wrapping_add(1);
        let now = self.clock;
        // Lower ranks win: the SSRC's own slot, then a free one, then the oldest.
        let rank = |slot: &Option<Entry<T>>| match slot {
            Some(entry) if entry.ssrc == ssrc => (0, 0),
            None => (1, 0),
            Some(entry) => (2, entry.last_used),
        };
        let [first, rest @ ..] = &mut self.entries;
        let mut chosen = first;
        for slot in rest {
            if rank(slot) < rank(chosen) {
                chosen = slot;
            }
        }
        if !matches!(chosen, Some(entry) if entry.ssrc == ssrc) {
            *chosen = None;
        }
        let entry = chosen.get_or_insert(Entry {
            ssrc,
            last_used: now,
            state: T::default(),
        });
        entry.last_used = now;
        &mut entry.state
    }
}

/// RFC 3711 Appendix A: the index of `seq` given the highest index so far, taking the
/// ROC one below or above the current one when `seq` is more than half the sequence
/// space away. `None` when that would need a ROC below 0 (sent before the first packet
/// we saw, across a wrap).
fn guess_index(highest: u64, seq: u16) -> Option<u64> {
    let roc = highest >> 16;
    let s_l = (highest & 0xffff) as u16;
    let v = if s_l < 0x8000 {
        if seq > s_l && seq - s_l > 0x8000 {
            roc.checked_sub(1)?
        } else {
            roc
        }
    } else if seq < s_l - 0x8000 {
        roc.wrapping_add(1)
    } else {
        roc
    };
    Some((v << 16) | u64::from(seq))
}

// ---------------------------------------------------------------------------
// Packet parsing
// ---------------------------------------------------------------------------

fn read_u16(bytes: &[u8], at: usize) -> Result<u16, SrtpError> {
    bytes
        .get(at..)
        .and_then(|rest| rest.first_chunk::<2>())
        .map(|b| u16::from_be_bytes(*b))
        .ok_or(SrtpError::Malformed)
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32, SrtpError> {
    bytes
        .get(at..)
        .and_then(|rest| rest.first_chunk::<4>())
        .map(|b| u32::from_be_bytes(*b))
        .ok_or(SrtpError::Malformed)
}

fn check_version(packet: &[u8]) -> Result<(), SrtpError> {
    match packet.first() {
        Some(first) if first >> 6 == 2 => Ok(()),
        Some(_) => Err(SrtpError::Malformed),
        None => Err(SrtpError::TooShort),
    }
}

/// Length of the RTP header (fixed part, CSRCs and extension), which stays in clear.
fn rtp_header_len(packet: &[u8]) -> Result<usize, SrtpError> {
    if packet.len() < RTP_HEADER_LEN {
        return Err(SrtpError::TooShort);
    }
    check_version(packet)?;
    let first = packet.first().copied().unwrap_or(0);
    let csrcs = usize::from(first & 0x0f);
    let mut len = RTP_HEADER_LEN + 4 * csrcs;
    if first & 0x10 != 0 {
        // Extension: 16-bit profile, 16-bit length in 32-bit words, then the words.
        let words = usize::from(read_u16(packet, len + 2)?);
        len = len
            .checked_add(4)
            .and_then(|l| l.checked_add(words.checked_mul(4)?))
            .ok_or(SrtpError::Malformed)?;
    }
    if len > packet.len() {
        return Err(SrtpError::Malformed);
    }
    Ok(len)
}

/// With the P bit set, the last byte counts the padding bytes, itself included; they
/// must lie within the payload.
fn check_padding(packet: &[u8], header_len: usize) -> Result<(), SrtpError> {
    let padded = packet.first().is_some_and(|first| first & 0x20 != 0);
    if !padded {
        return Ok(());
    }
    let count = usize::from(packet.last().copied().unwrap_or(0));
    let payload = packet.len().saturating_sub(header_len);
    if count == 0 || count > payload {
        return Err(SrtpError::Malformed);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Cryptography
// ---------------------------------------------------------------------------

/// Copies the overlapping prefix; the callers' fixed sizes make it exact.
fn copy_prefix(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = *s;
    }
}

/// Big-endian bytes (at most 16) as an integer.
fn be_u128(bytes: &[u8]) -> u128 {
    bytes
        .iter()
        .fold(0, |acc, byte| (acc << 8) | u128::from(*byte))
}

/// The AES block cipher with its key schedule expanded once.
// AES-128 wastes 256 bytes here; a few instances live per peer, and boxing would add
// a pointer chase to every packet.
#[allow(clippy::large_enum_variant)]
enum Aes {
    A128(Aes128),
    A256(Aes256),
}

impl Aes {
    /// From a 16- or 32-byte key (anything but 16 bytes is read as 32).
    fn new(key: &[u8]) -> Self {
        if key.len() == 16 {
            let mut k = [0; 16];
            copy_prefix(&mut k, key);
            Aes::A128(Aes128::new(&k.into()))
        } else {
            let mut k = [0; 32];
            copy_prefix(&mut k, key);
            Aes::A256(Aes256::new(&k.into()))
        }
    }

    fn encrypt_block(&self, block: [u8; 16]) -> [u8; 16] {
        let mut block = block.into();
        match self {
            Aes::A128(aes) => aes.encrypt_block(&mut block),
            Aes::A256(aes) => aes.encrypt_block(&mut block),
        }
        block.into()
    }

    /// XORs AES counter-mode keystream starting at block `iv` into `data`
    /// (RFC 3711 §4.1.1; the low 16 bits count blocks, which never overflow for
    /// packets under 1 MiB, so a 128-bit counter is the same).
    fn apply_keystream(&self, iv: [u8; 16], data: &mut [u8]) -> Result<(), SrtpError> {
        let iv = iv.into();
        let done = match self {
            Aes::A128(aes) => {
                StreamCipherCoreWrapper::from_core(
                    ctr::CtrCore::<&Aes128, ctr::flavors::Ctr128BE>::inner_iv_init(aes, &iv),
                )
                .try_apply_keystream(data)
            }
            Aes::A256(aes) => {
                StreamCipherCoreWrapper::from_core(
                    ctr::CtrCore::<&Aes256, ctr::flavors::Ctr128BE>::inner_iv_init(aes, &iv),
                )
                .try_apply_keystream(data)
            }
        };
        done.map_err(|_| SrtpError::Malformed)
    }
}

/// AES-GCM with its key schedule and GHASH key expanded once.
// Sized for AES-256 inline, like `Aes`.
#[allow(clippy::large_enum_variant)]
enum Gcm {
    A128(Aes128Gcm),
    A256(Aes256Gcm),
}

impl Gcm {
    fn new(key: &[u8]) -> Self {
        if key.len() == 16 {
            let mut k = [0; 16];
            copy_prefix(&mut k, key);
            Gcm::A128(Aes128Gcm::new(&k.into()))
        } else {
            let mut k = [0; 32];
            copy_prefix(&mut k, key);
            Gcm::A256(Aes256Gcm::new(&k.into()))
        }
    }

    fn seal(&self, nonce: [u8; 12], aad: &[u8], data: &mut [u8]) -> Result<Tag, SrtpError> {
        let nonce = Nonce::from(nonce);
        match self {
            Gcm::A128(gcm) => gcm.encrypt_in_place_detached(&nonce, aad, data),
            Gcm::A256(gcm) => gcm.encrypt_in_place_detached(&nonce, aad, data),
        }
        // Only fails beyond 64 GiB.
        .map_err(|_| SrtpError::Malformed)
    }

    /// Verifies (in constant time) before decrypting; on failure `data` is untouched.
    fn open(
        &self,
        nonce: [u8; 12],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8],
    ) -> Result<(), SrtpError> {
        let nonce = Nonce::from(nonce);
        let mut expected = Tag::default();
        if tag.len() != expected.len() {
            return Err(SrtpError::TooShort);
        }
        copy_prefix(&mut expected, tag);
        match self {
            Gcm::A128(gcm) => gcm.decrypt_in_place_detached(&nonce, aad, data, &expected),
            Gcm::A256(gcm) => gcm.decrypt_in_place_detached(&nonce, aad, data, &expected),
        }
        .map_err(|_| SrtpError::AuthFailed)
    }
}

/// Session keys for one direction of RTP or of RTCP.
enum Transform {
    /// AES-CM with HMAC-SHA1 (RFC 3711 §4.1.1, §4.2.1).
    Cm {
        aes: Aes,
        /// Keyed once; cloned per packet, which skips rehashing the padded key.
        mac: Hmac<Sha1>,
        /// 112-bit session salt.
        salt: u128,
        /// RTP tag length (10 or 4); SRTCP always uses 10.
        rtp_tag_len: usize,
    },
    /// AEAD AES-GCM (RFC 7714).
    Gcm {
        gcm: Gcm,
        /// 96-bit session salt.
        salt: u128,
    },
}

/// RFC 3711 §4.3.1 key derivation with key derivation rate 0: the keystream of
/// AES-CM under the master key, starting at `(master_salt XOR label << 48) << 16`.
///
/// A 12-byte AEAD master salt is padded with two zero bytes on the right to the 112
/// bits the PRF takes (RFC 7714 §11; libsrtp and webrtc-rs do the same), so the label
/// lands in byte 7 of the salt either way.
fn derive(master_aes: &Aes, master_salt: &[u8], label: u8, out: &mut [u8]) {
    let padding = 8 * CM_SALT_LEN.saturating_sub(master_salt.len());
    let salt = be_u128(master_salt)
        .checked_shl(shift(padding as u64))
        .unwrap_or(0);
    let first = (salt ^ (u128::from(label) << 48)) << 16;
    let mut counter = first;
    for chunk in out.chunks_mut(16) {
        copy_prefix(chunk, &master_aes.encrypt_block(counter.to_be_bytes()));
        counter = counter.wrapping_add(1);
    }
}

impl Transform {
    /// Derives the session keys for RTP (`rtcp` false) or RTCP from the master key.
    fn derive(master: &MasterKey, rtcp: bool) -> Self {
        let (enc, auth, salt_label) = if rtcp {
            (LABEL_RTCP_ENCRYPTION, LABEL_RTCP_AUTH, LABEL_RTCP_SALT)
        } else {
            (LABEL_RTP_ENCRYPTION, LABEL_RTP_AUTH, LABEL_RTP_SALT)
        };
        let suite = master.suite;
        let master_aes = Aes::new(master.key());
        let mut key = [0; 32];
        let key = key.get_mut(..suite.key_len()).unwrap_or(&mut []);
        derive(&master_aes, master.salt(), enc, key);
        if suite.is_aead() {
            let mut salt = [0; GCM_SALT_LEN];
            derive(&master_aes, master.salt(), salt_label, &mut salt);
            Transform::gcm(key, &salt)
        } else {
            let mut salt = [0; CM_SALT_LEN];
            derive(&master_aes, master.salt(), salt_label, &mut salt);
            let mut auth_key = [0; AUTH_KEY_LEN];
            derive(&master_aes, master.salt(), auth, &mut auth_key);
            Transform::cm(key, &auth_key, &salt, suite.rtp_overhead())
        }
    }

    fn cm(
        key: &[u8],
        auth_key: &[u8; AUTH_KEY_LEN],
        salt: &[u8; CM_SALT_LEN],
        rtp_tag_len: usize,
    ) -> Self {
        // HMAC zero-pads keys shorter than the block (RFC 2104), so padding here is the
        // same key and keeps construction infallible.
        let mut block = hmac::digest::Key::<Hmac<Sha1>>::default();
        copy_prefix(&mut block, auth_key);
        Transform::Cm {
            aes: Aes::new(key),
            mac: <Hmac<Sha1> as KeyInit>::new(&block),
            salt: be_u128(salt),
            rtp_tag_len,
        }
    }

    fn gcm(key: &[u8], salt: &[u8; GCM_SALT_LEN]) -> Self {
        Transform::Gcm {
            gcm: Gcm::new(key),
            salt: be_u128(salt),
        }
    }

    /// AES-CM IV (RFC 3711 §4.1.1): `(salt << 16) XOR (SSRC << 64) XOR (index << 16)`.
    fn cm_iv(salt: u128, ssrc: u32, index: u64) -> [u8; 16] {
        ((salt << 16) ^ (u128::from(ssrc) << 64) ^ (u128::from(index) << 16)).to_be_bytes()
    }

    /// GCM IV (RFC 7714 §8.1, §9.1): `00 00 || SSRC || ROC || SEQ` for SRTP and
    /// `00 00 || SSRC || 00 00 || 0 || index` for SRTCP, XOR the salt. Both are the
    /// index in the low 48 bits and the SSRC above it.
    fn gcm_iv(salt: u128, ssrc: u32, index: u64) -> [u8; 12] {
        let iv = salt ^ (u128::from(ssrc) << 48) ^ u128::from(index);
        let [_, _, _, _, low @ ..] = iv.to_be_bytes();
        low
    }

    fn hmac(mac: &Hmac<Sha1>, parts: [&[u8]; 2]) -> [u8; AUTH_KEY_LEN] {
        let mut mac = mac.clone();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// Encrypts the payload of `buf[..len]` and appends the tag; returns the new length.
    fn seal_rtp(
        &self,
        buf: &mut [u8],
        len: usize,
        header_len: usize,
        ssrc: u32,
        index: u64,
    ) -> Result<usize, SrtpError> {
        let (packet, spare) = buf.split_at_mut_checked(len).ok_or(SrtpError::NoRoom)?;
        match self {
            Transform::Cm {
                aes,
                mac,
                salt,
                rtp_tag_len,
            } => {
                let tag = spare.get_mut(..*rtp_tag_len).ok_or(SrtpError::NoRoom)?;
                let payload = packet.get_mut(header_len..).ok_or(SrtpError::Malformed)?;
                aes.apply_keystream(Self::cm_iv(*salt, ssrc, index), payload)?;
                let roc = ((index >> 16) as u32).to_be_bytes();
                copy_prefix(tag, &Self::hmac(mac, [packet, &roc]));
                Ok(len + *rtp_tag_len)
            }
            Transform::Gcm { gcm, salt } => {
                let tag = spare.get_mut(..GCM_TAG_LEN).ok_or(SrtpError::NoRoom)?;
                let (header, payload) = packet
                    .split_at_mut_checked(header_len)
                    .ok_or(SrtpError::Malformed)?;
                copy_prefix(
                    tag,
                    &gcm.seal(Self::gcm_iv(*salt, ssrc, index), header, payload)?,
                );
                Ok(len + GCM_TAG_LEN)
            }
        }
    }

    /// Verifies and decrypts the whole SRTP packet `packet`; returns the plaintext
    /// length. Verification comes first, so on failure `packet` is untouched.
    fn open_rtp(
        &self,
        packet: &mut [u8],
        header_len: usize,
        ssrc: u32,
        index: u64,
    ) -> Result<usize, SrtpError> {
        match self {
            Transform::Cm {
                aes,
                mac,
                salt,
                rtp_tag_len,
            } => {
                let body_len = packet
                    .len()
                    .checked_sub(*rtp_tag_len)
                    .ok_or(SrtpError::TooShort)?;
                let (body, tag) = packet
                    .split_at_mut_checked(body_len)
                    .ok_or(SrtpError::TooShort)?;
                let roc = ((index >> 16) as u32).to_be_bytes();
                let expected = Self::hmac(mac, [body, &roc]);
                let expected = expected.get(..tag.len()).unwrap_or(&[]);
                if !bool::from(expected.ct_eq(tag)) {
                    return Err(SrtpError::AuthFailed);
                }
                let payload = body.get_mut(header_len..).ok_or(SrtpError::Malformed)?;
                aes.apply_keystream(Self::cm_iv(*salt, ssrc, index), payload)?;
                Ok(body_len)
            }
            Transform::Gcm { gcm, salt } => {
                let body_len = packet
                    .len()
                    .checked_sub(GCM_TAG_LEN)
                    .ok_or(SrtpError::TooShort)?;
                let (body, tag) = packet
                    .split_at_mut_checked(body_len)
                    .ok_or(SrtpError::TooShort)?;
                let (header, payload) = body
                    .split_at_mut_checked(header_len)
                    .ok_or(SrtpError::Malformed)?;
                gcm.open(Self::gcm_iv(*salt, ssrc, index), header, payload, tag)?;
                Ok(body_len)
            }
        }
    }

    /// Encrypts `buf[..len]` after its first 8 bytes and appends `E || index` and the
    /// tag in the order the transform uses; returns the new length.
    fn seal_rtcp(
        &self,
        buf: &mut [u8],
        len: usize,
        ssrc: u32,
        index: u32,
    ) -> Result<usize, SrtpError> {
        let word = (E_FLAG | index).to_be_bytes();
        let (packet, spare) = buf.split_at_mut_checked(len).ok_or(SrtpError::NoRoom)?;
        match self {
            Transform::Cm { aes, mac, salt, .. } => {
                // header | encrypted | E || index | tag, the tag covering all before it.
                let (trailer, rest) = spare
                    .split_at_mut_checked(SRTCP_INDEX_LEN)
                    .ok_or(SrtpError::NoRoom)?;
                let tag_len = Suite::AesCm128HmacSha1_80.rtcp_tag_len();
                let tag = rest.get_mut(..tag_len).ok_or(SrtpError::NoRoom)?;
                let payload = packet
                    .get_mut(RTCP_HEADER_LEN..)
                    .ok_or(SrtpError::TooShort)?;
                aes.apply_keystream(Self::cm_iv(*salt, ssrc, u64::from(index)), payload)?;
                copy_prefix(trailer, &word);
                copy_prefix(tag, &Self::hmac(mac, [packet, &word]));
                Ok(len + SRTCP_INDEX_LEN + tag_len)
            }
            Transform::Gcm { gcm, salt } => {
                // header | encrypted | tag | E || index; AAD = header || E || index.
                let (tag, rest) = spare
                    .split_at_mut_checked(GCM_TAG_LEN)
                    .ok_or(SrtpError::NoRoom)?;
                let trailer = rest.get_mut(..SRTCP_INDEX_LEN).ok_or(SrtpError::NoRoom)?;
                let (header, payload) = packet
                    .split_at_mut_checked(RTCP_HEADER_LEN)
                    .ok_or(SrtpError::TooShort)?;
                let aad = Self::rtcp_aad(header, word);
                let iv = Self::gcm_iv(*salt, ssrc, u64::from(index));
                copy_prefix(tag, &gcm.seal(iv, &aad, payload)?);
                copy_prefix(trailer, &word);
                Ok(len + GCM_TAG_LEN + SRTCP_INDEX_LEN)
            }
        }
    }

    /// The 12-byte GCM AAD of an encrypted SRTCP packet: its first 8 bytes and
    /// `E || index` (RFC 7714 §9.2).
    fn rtcp_aad(header: &[u8], word: [u8; 4]) -> [u8; 12] {
        let mut aad = [0; 12];
        let (head, tail) = aad.split_at_mut(RTCP_HEADER_LEN);
        copy_prefix(head, header);
        copy_prefix(tail, &word);
        aad
    }

    /// Verifies and, with `E` set, decrypts the whole SRTCP packet `packet` whose index
    /// word is `word`; returns the RTCP length. On failure `packet` is unchanged.
    fn open_rtcp(&self, packet: &mut [u8], ssrc: u32, word: u32) -> Result<usize, SrtpError> {
        let encrypted = word & E_FLAG != 0;
        let index = u64::from(word & SRTCP_INDEX_MASK);
        match self {
            Transform::Cm { aes, mac, salt, .. } => {
                let tag_len = Suite::AesCm128HmacSha1_80.rtcp_tag_len();
                let body_len = packet
                    .len()
                    .checked_sub(tag_len)
                    .ok_or(SrtpError::TooShort)?;
                let (body, tag) = packet
                    .split_at_mut_checked(body_len)
                    .ok_or(SrtpError::TooShort)?;
                let expected = Self::hmac(mac, [body, &[]]);
                let expected = expected.get(..tag.len()).unwrap_or(&[]);
                if !bool::from(expected.ct_eq(tag)) {
                    return Err(SrtpError::AuthFailed);
                }
                let rtcp_len = body_len
                    .checked_sub(SRTCP_INDEX_LEN)
                    .ok_or(SrtpError::TooShort)?;
                if encrypted {
                    let payload = body
                        .get_mut(RTCP_HEADER_LEN..rtcp_len)
                        .ok_or(SrtpError::TooShort)?;
                    aes.apply_keystream(Self::cm_iv(*salt, ssrc, index), payload)?;
                }
                Ok(rtcp_len)
            }
            Transform::Gcm { gcm, salt } => {
                let rtcp_len = packet
                    .len()
                    .checked_sub(GCM_TAG_LEN + SRTCP_INDEX_LEN)
                    .ok_or(SrtpError::TooShort)?;
                let iv = Self::gcm_iv(*salt, ssrc, index);
                if encrypted {
                    let (rtcp, trailer) = packet
                        .split_at_mut_checked(rtcp_len)
                        .ok_or(SrtpError::TooShort)?;
                    let tag = trailer.get(..GCM_TAG_LEN).ok_or(SrtpError::TooShort)?;
                    let (header, payload) = rtcp
                        .split_at_mut_checked(RTCP_HEADER_LEN)
                        .ok_or(SrtpError::TooShort)?;
                    gcm.open(
                        iv,
                        &Self::rtcp_aad(header, word.to_be_bytes()),
                        payload,
                        tag,
                    )?;
                } else {
                    // Unencrypted SRTCP authenticates `RTCP || E || index`, but the wire
                    // order is `RTCP | tag | E || index`: swap the two trailers so the
                    // AAD is contiguous, verify, and swap back.
                    let trailer = packet.get_mut(rtcp_len..).ok_or(SrtpError::TooShort)?;
                    trailer.rotate_left(GCM_TAG_LEN);
                    let verified = match packet.split_at_mut_checked(rtcp_len + SRTCP_INDEX_LEN) {
                        Some((aad, tag)) => gcm.open(iv, aad, &mut [], tag),
                        None => Err(SrtpError::TooShort),
                    };
                    if let Some(trailer) = packet.get_mut(rtcp_len..) {
                        trailer.rotate_right(GCM_TAG_LEN);
                    }
                    verified?;
                }
                Ok(rtcp_len)
            }
        }
    }
}

/// Session keys for RTP and RTCP in one direction.
struct Session {
    suite: Suite,
    rtp: Transform,
    rtcp: Transform,
}

impl Session {
    fn new(master: &MasterKey) -> Self {
        Session {
            suite: master.suite,
            rtp: Transform::derive(master, false),
            rtcp: Transform::derive(master, true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webrtc_srtp::context::Context;
    use webrtc_srtp::protection_profile::ProtectionProfile;

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        digits
            .chunks(2)
            .map(|pair| {
                let pair = std::str::from_utf8(pair).expect("ascii");
                u8::from_str_radix(pair, 16).expect("hex digit")
            })
            .collect()
    }

    fn master(suite: Suite, key_and_salt: &str) -> MasterKey {
        MasterKey::new(suite, &hex(key_and_salt)).expect("valid master key")
    }

    /// Master key and salt of RFC 3711 Appendix B.3 (also libsrtp's self-test).
    const RFC3711_MASTER: &str = "E1F97A0D3E018BE0D64FA32C06DE4139 0EC675AD498AFEEBB6960B3AABE6";
    /// Master key and salt of RFC 6188 §7.2.
    const RFC6188_MASTER: &str = "F0F04914B513F2763A1B1FA130F10E2998F6F6E43E4309D1E622A0E332B9F1B6
                                  3B04803DE51EE7C96423AB5B78D2";

    fn derived(master: &MasterKey, label: u8, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        derive(&Aes::new(master.key()), master.salt(), label, &mut out);
        out
    }

    fn sender_with(session: Session) -> SrtpSender {
        SrtpSender {
            session,
            streams: Table::new(),
            srtcp_index: 0,
        }
    }

    fn receiver_with(session: Session) -> SrtpReceiver {
        SrtpReceiver {
            session,
            streams: Table::new(),
        }
    }

    fn protect_rtp(sender: &mut SrtpSender, plain: &[u8]) -> Vec<u8> {
        let mut buf = plain.to_vec();
        buf.resize(plain.len() + MAX_OVERHEAD, 0);
        let len = sender
            .protect_rtp(&mut buf, plain.len())
            .expect("protect_rtp");
        buf.truncate(len);
        buf
    }

    fn protect_rtcp(sender: &mut SrtpSender, plain: &[u8]) -> Vec<u8> {
        let mut buf = plain.to_vec();
        buf.resize(plain.len() + MAX_OVERHEAD, 0);
        let len = sender
            .protect_rtcp(&mut buf, plain.len())
            .expect("protect_rtcp");
        buf.truncate(len);
        buf
    }

    /// Unprotects and commits; returns the plaintext.
    fn accept_rtp(receiver: &mut SrtpReceiver, wire: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let mut buf = wire.to_vec();
        let token = receiver.unprotect_rtp(&mut buf, wire.len())?;
        receiver.commit(&token);
        buf.truncate(token.len());
        Ok(buf)
    }

    fn accept_rtcp(receiver: &mut SrtpReceiver, wire: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let mut buf = wire.to_vec();
        let token = receiver.unprotect_rtcp(&mut buf, wire.len())?;
        assert!(token.is_rtcp());
        receiver.commit(&token);
        buf.truncate(token.len());
        Ok(buf)
    }

    /// An RTP packet: `csrcs` CSRCs, a one-byte-header extension of `ext_words` words,
    /// `payload` bytes and, if `padding` > 0, that many padding bytes.
    fn rtp(seq: u16, ssrc: u32, csrcs: u8, ext_words: u16, payload: usize, padding: u8) -> Vec<u8> {
        let mut p = vec![0x80 | csrcs, 96];
        if ext_words > 0 {
            p[0] |= 0x10;
        }
        if padding > 0 {
            p[0] |= 0x20;
        }
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        for c in 0..u32::from(csrcs) {
            p.extend_from_slice(&(0x1000 + c).to_be_bytes());
        }
        if ext_words > 0 {
            p.extend_from_slice(&[0xbe, 0xde]);
            p.extend_from_slice(&ext_words.to_be_bytes());
            for w in 0..ext_words {
                // One element per word: ID, L = 2 (three data bytes).
                p.extend_from_slice(&[((w % 14 + 1) as u8) << 4 | 2, 0xa0, 0xa1, w as u8]);
            }
        }
        p.extend((0..payload).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seq as u8)));
        if padding > 0 {
            p.extend(std::iter::repeat_n(0, usize::from(padding) - 1));
            p.push(padding);
        }
        p
    }

    /// A compound RTCP packet: a receiver report with one report block, then an SDES.
    fn rtcp(ssrc: u32, tag: u8) -> Vec<u8> {
        let mut p = vec![0x81, 201, 0, 7];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&0x5555_0001u32.to_be_bytes());
        p.extend((0..20).map(|i| tag.wrapping_add(i)));
        // SDES, one chunk: CNAME "baton" + END, padded to a word.
        p.extend_from_slice(&[0x81, 202, 0, 3]);
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[1, 5, b'b', b'a', b't', b'o', b'n', 0]);
        p
    }

    // -----------------------------------------------------------------------
    // Suite, key and error basics
    // -----------------------------------------------------------------------

    #[test]
    fn suite_names_and_lengths() {
        for suite in Suite::ALL {
            assert_eq!(Suite::from_name(suite.name()), Some(suite));
            assert_eq!(suite.master_len(), suite.key_len() + suite.salt_len());
            assert!(suite.rtp_overhead() <= MAX_OVERHEAD);
            assert!(suite.rtcp_overhead() <= MAX_OVERHEAD);
        }
        assert_eq!(Suite::from_name("aes_cm_128_hmac_sha1_80"), None);
        assert_eq!(Suite::from_name("AES_CM_256_HMAC_SHA1_80"), None);
        assert_eq!(Suite::AesCm256HmacSha1_32.name(), "AES_256_CM_HMAC_SHA1_32");
        let overheads: Vec<_> = Suite::ALL
            .iter()
            .map(|s| {
                (
                    s.key_len(),
                    s.salt_len(),
                    s.rtp_overhead(),
                    s.rtcp_overhead(),
                )
            })
            .collect();
        assert_eq!(
            overheads,
            [
                (16, 14, 10, 14),
                (16, 14, 4, 14),
                (16, 12, 16, 20),
                (32, 12, 16, 20),
                (32, 14, 10, 14),
                (32, 14, 4, 14)
            ]
        );
        assert_eq!(
            Suite::ALL.iter().map(|s| s.rtcp_overhead()).max(),
            Some(MAX_OVERHEAD)
        );
    }

    #[test]
    fn master_key_lengths_and_redaction() {
        for suite in Suite::ALL {
            let n = suite.master_len();
            assert_eq!(
                MasterKey::new(suite, &vec![7; n - 1]).err(),
                Some(SrtpError::BadKey)
            );
            assert_eq!(
                MasterKey::new(suite, &vec![7; n + 1]).err(),
                Some(SrtpError::BadKey)
            );
            let key = MasterKey::new(suite, &vec![0xab; n]).expect("right length");
            assert_eq!(key.key_and_salt(), &vec![0xab; n][..]);
            assert_eq!(key.suite(), suite);
            let shown = format!("{key:?}");
            assert!(
                !shown.contains("171") && !shown.to_lowercase().contains("ab, "),
                "{shown}"
            );
            let a = MasterKey::random(suite);
            let b = MasterKey::random(suite);
            assert_eq!(a.key_and_salt().len(), n);
            assert_ne!(a.key_and_salt(), b.key_and_salt());
        }
        assert_eq!(SrtpError::AuthFailed.to_string(), "auth_failed");
        assert_eq!(SrtpError::TooOld.name(), "too_old");
    }

    // -----------------------------------------------------------------------
    // Known-answer vectors
    // -----------------------------------------------------------------------

    /// RFC 3711 Appendix B.2: AES-CM keystream for SSRC 0, index 0.
    #[test]
    fn rfc3711_b2_aes_cm_keystream() {
        let aes = Aes::new(&hex("2B7E151628AED2A6ABF7158809CF4F3C"));
        let salt = be_u128(&hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD"));
        let iv = Transform::cm_iv(salt, 0, 0);
        assert_eq!(iv.to_vec(), hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000"));
        let mut stream = vec![0; 0xff02 * 16];
        aes.apply_keystream(iv, &mut stream).expect("keystream");
        let block = |n: usize| stream[n * 16..(n + 1) * 16].to_vec();
        assert_eq!(block(0), hex("E03EAD0935C95E80E166B16DD92B4EB4"));
        assert_eq!(block(1), hex("D23513162B02D0F72A43A2FE4A5F97AB"));
        assert_eq!(block(2), hex("41E95B3BB0A2E8DD477901E4FCA894C0"));
        assert_eq!(block(0xfeff), hex("EC8CDF7398607CB0F2D21675EA9EA1E4"));
        assert_eq!(block(0xff00), hex("362B7C3C6773516318A077D7FC5073AE"));
        assert_eq!(block(0xff01), hex("6A2CC3787889374FBEB4C81B17BA6C44"));
    }

    /// RFC 3711 Appendix B.3: key derivation (the 94-byte auth key checks the counter).
    #[test]
    fn rfc3711_b3_key_derivation() {
        let m = master(Suite::AesCm128HmacSha1_80, RFC3711_MASTER);
        assert_eq!(derived(&m, 0, 16), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        assert_eq!(derived(&m, 2, 14), hex("30CBBC08863D8C85D49DB34A9AE1"));
        assert_eq!(
            derived(&m, 1, 94),
            hex(
                "CEBE321F6FF7716B6FD4AB49AF256A156D38BAA48F0A0ACF3C34E2359E6CDBCE
                 E049646C43D9327AD175578EF72270986371C10C9A369AC2F94A8C5FBCDDDC25
                 6D6E919A48B610EF17C2041E474035766B68642C59BBFC2F34DB60DBDFB2"
            )
        );
        // SRTCP labels on the same master key (values published with libsrtp-derived
        // test suites; they also agree with webrtc-srtp below).
        assert_eq!(derived(&m, 3, 16), hex("4c1aa45a81f73d61c800bbb00fbb1eaa"));
        assert_eq!(
            derived(&m, 4, 20),
            hex("8d54534feb49ae8e7993a6bd0b844fc323a93dfd")
        );
        assert_eq!(derived(&m, 5, 14), hex("9581c7ad87b3e530bf3e4454a8b3"));
    }

    /// RFC 6188 §7.2: AES-256 key derivation.
    #[test]
    fn rfc6188_aes256_key_derivation() {
        let m = master(Suite::AesCm256HmacSha1_80, RFC6188_MASTER);
        assert_eq!(
            derived(&m, 0, 32),
            hex("5BA1064E30EC51613CAD926C5A28EF731EC7FB397F70A960653CAF06554CD8C4")
        );
        assert_eq!(derived(&m, 2, 14), hex("FA31791685CA444A9E07C6C64E93"));
        assert_eq!(
            derived(&m, 1, 20),
            hex("FD9C32D39ED5FBB5A9DC96B30818454D1313DC05")
        );
    }

    /// A 12-byte AEAD master salt is right-padded with zeros before the label is
    /// applied. Expected values computed independently with
    /// `openssl enc -aes-{128,256}-ctr -iv a0a1a2a3a4a5a6(a7^label)a8a9aaab00000000`.
    #[test]
    fn aead_key_derivation_pads_salt_on_the_right() {
        let m = master(
            Suite::AeadAes128Gcm,
            "000102030405060708090a0b0c0d0e0f a0a1a2a3a4a5a6a7a8a9aaab",
        );
        assert_eq!(derived(&m, 0, 16), hex("077c6143cb221bc355ff23d5f984a16e"));
        assert_eq!(derived(&m, 2, 12), hex("9af3e95364ebac9c99c5a7c4"));
        assert_eq!(derived(&m, 3, 16), hex("615dcd9042600666f6fd4d9e4fe4519f"));
        assert_eq!(derived(&m, 5, 12), hex("fcca937b9112a500dac72269"));
        let m = master(
            Suite::AeadAes256Gcm,
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
             a0a1a2a3a4a5a6a7a8a9aaab",
        );
        assert_eq!(
            derived(&m, 0, 32),
            hex("b7a435ce454463b760dc82c838468a115c699625af4b93a0f8220a2a6119c5d0")
        );
    }

    /// libsrtp's `srtp_validate` packet (AES_CM_128_HMAC_SHA1_80, RFC 3711 B.3 master).
    #[test]
    fn aes_cm_128_known_packet() {
        let key = master(Suite::AesCm128HmacSha1_80, RFC3711_MASTER);
        let plain = hex("800f1234 decafbad cafebabe abababab abababab abababab abababab");
        let wire = hex(
            "800f1234 decafbad cafebabe 4e55dc4c e79978d8 8ca4d215 949d2402 b78d6acc 99ea179b 8dbb",
        );
        assert_eq!(protect_rtp(&mut SrtpSender::new(&key), &plain), wire);
        assert_eq!(accept_rtp(&mut SrtpReceiver::new(&key), &wire), Ok(plain));
    }

    /// libsrtp's AES-256 self-test packet (AES_256_CM_HMAC_SHA1_80, RFC 6188 master).
    #[test]
    fn aes_cm_256_known_packet() {
        let key = master(Suite::AesCm256HmacSha1_80, RFC6188_MASTER);
        let plain = hex("800f1234 decafbad cafebabe abababab abababab abababab abababab");
        let wire = hex(
            "800f1234 decafbad cafebabe f1d9de17 ff251ff1 aa007774 b0b4b40d a08d9d9a 5b3a55d8 873b",
        );
        assert_eq!(protect_rtp(&mut SrtpSender::new(&key), &plain), wire);
        assert_eq!(accept_rtp(&mut SrtpReceiver::new(&key), &wire), Ok(plain));
    }

    // RFC 7714 §16 and §17 give session keys (no key derivation).
    const RFC7714_KEY_128: &str = "000102030405060708090a0b0c0d0e0f";
    const RFC7714_KEY_256: &str =
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const RFC7714_RTP: &str = "8040f17b 8041f8d3 5501a0b2 47616c6c 69612065 7374206f 6d6e6973
                               20646976 69736120 696e2070 61727465 73207472 6573";
    const RFC7714_RTCP: &str = "81c8000d 4d617273 4e545031 4e545032 52545020 0000042a 0000e930
                                4c756e61 deadbeef deadbeef deadbeef deadbeef deadbeef";

    fn rfc7714_session(key: &str) -> Session {
        let key = hex(key);
        let mut salt = [0; GCM_SALT_LEN];
        salt.copy_from_slice(&hex("517569642070726f2071756f"));
        Session {
            suite: if key.len() == 16 {
                Suite::AeadAes128Gcm
            } else {
                Suite::AeadAes256Gcm
            },
            rtp: Transform::gcm(&key, &salt),
            rtcp: Transform::gcm(&key, &salt),
        }
    }

    #[test]
    fn rfc7714_iv() {
        let salt = be_u128(&hex("517569642070726f2071756f"));
        assert_eq!(
            Transform::gcm_iv(salt, 0x5501_a0b2, 0xf17b).to_vec(),
            hex("51753c6580c2726f20718414")
        );
        assert_eq!(
            Transform::gcm_iv(salt, 0x4d61_7273, 0x5d4).to_vec(),
            hex("517524055203726f207170bb")
        );
    }

    /// RFC 7714 §16.1 and §16.2: SRTP with AEAD_AES_128_GCM and AEAD_AES_256_GCM.
    #[test]
    fn rfc7714_srtp() {
        let cases = [
            (
                RFC7714_KEY_128,
                "8040f17b 8041f8d3 5501a0b2 f24de3a3 fb34de6c acba861c 9d7e4bca be633bd5
                 0d294e6f 42a5f47a 51c7d19b 36de3adf 8833899d 7f27beb1 6a9152cf 765ee439 0cce",
            ),
            (
                RFC7714_KEY_256,
                "8040f17b 8041f8d3 5501a0b2 32b1de78 a822fe12 ef9f78fa 332e33aa b1801238
                 9a58e2f3 b50b2a02 76ffae0f 1ba63799 b87b7aa3 db36dfff d6b0f9bb 7878d7a7 6c13",
            ),
        ];
        for (key, wire) in cases {
            let plain = hex(RFC7714_RTP);
            let mut sender = sender_with(rfc7714_session(key));
            assert_eq!(protect_rtp(&mut sender, &plain), hex(wire));
            let mut receiver = receiver_with(rfc7714_session(key));
            assert_eq!(accept_rtp(&mut receiver, &hex(wire)), Ok(plain));
            assert_eq!(
                accept_rtp(&mut receiver, &hex(wire)),
                Err(SrtpError::Replayed)
            );
        }
    }

    /// RFC 7714 §17.1-§17.4: SRTCP, encrypted (E = 1) and authenticated only (E = 0).
    #[test]
    fn rfc7714_srtcp() {
        let encrypted = [
            (
                RFC7714_KEY_128,
                "81c8000d 4d617273 63e94885 dcdab67c a727d766 2f6b7e99 7ff5c0f7 6c06f32d
                 c676a5f1 730d6fda 4ce09b46 86303ded 0bb9275b c84aa458 96cf4d2f c5abf872
                 45d9eade 800005d4",
            ),
            (
                RFC7714_KEY_256,
                "81c8000d 4d617273 d50ae4d1 f5ce5d30 4ba297e4 7d470c28 2c3ece5d bffe0a50
                 a2eaa5c1 110555be 8415f658 c61de047 6f1b6fad 1d1eb30c 4446839f 57ff6f6c
                 b26ac3be 800005d4",
            ),
        ];
        let plain = hex(RFC7714_RTCP);
        for (key, wire) in encrypted {
            let mut sender = sender_with(rfc7714_session(key));
            sender.srtcp_index = 0x5d4;
            assert_eq!(protect_rtcp(&mut sender, &plain), hex(wire));
            assert_eq!(sender.srtcp_index, 0x5d5);
            let mut receiver = receiver_with(rfc7714_session(key));
            assert_eq!(accept_rtcp(&mut receiver, &hex(wire)), Ok(plain.clone()));
            assert_eq!(
                accept_rtcp(&mut receiver, &hex(wire)),
                Err(SrtpError::Replayed)
            );
        }
        let authenticated_only = [
            (
                RFC7714_KEY_128,
                "841dd968 3dd78ec9 2ae58790 125f62b3 000005d4",
            ),
            (
                RFC7714_KEY_256,
                "91db4afb feee5a97 8fab4393 ed2615fe 000005d4",
            ),
        ];
        for (key, trailer) in authenticated_only {
            let mut wire = plain.clone();
            wire.extend(hex(trailer));
            let receiver = receiver_with(rfc7714_session(key));
            let mut buf = wire.clone();
            let token = receiver
                .unprotect_rtcp(&mut buf, wire.len())
                .expect("E=0 packet");
            assert_eq!((token.len(), token.index()), (plain.len(), 0x5d4));
            assert_eq!(buf, wire, "E=0: the packet is left as it was");
            let mut forged = wire.clone();
            forged[20] ^= 1;
            let mut buf = forged.clone();
            assert_eq!(
                receiver.unprotect_rtcp(&mut buf, forged.len()).err(),
                Some(SrtpError::AuthFailed)
            );
            assert_eq!(buf, forged, "a failed check restores the trailer order");
        }
    }

    /// AES-CM SRTCP with E = 0: authenticated over RTCP || E || index, not decrypted.
    #[test]
    fn aes_cm_srtcp_unencrypted_is_accepted() {
        let key = MasterKey::random(Suite::AesCm128HmacSha1_32);
        let plain = rtcp(0x1111, 3);
        let session = Session::new(&key);
        let Transform::Cm { mac, .. } = &session.rtcp else {
            panic!("AES-CM suite");
        };
        let word = 0x0000_0009u32.to_be_bytes();
        let mut wire = plain.clone();
        wire.extend_from_slice(&word);
        let tag = Transform::hmac(mac, [&wire, &[]]);
        wire.extend_from_slice(&tag[..10]);
        let mut receiver = SrtpReceiver::new(&key);
        assert_eq!(accept_rtcp(&mut receiver, &wire), Ok(plain));
        assert_eq!(accept_rtcp(&mut receiver, &wire), Err(SrtpError::Replayed));
    }

    // -----------------------------------------------------------------------
    // Differential against webrtc-srtp
    // -----------------------------------------------------------------------

    fn webrtc_profile(suite: Suite) -> ProtectionProfile {
        match suite {
            Suite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            Suite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
            Suite::AesCm256HmacSha1_80 => ProtectionProfile::Aes256CmHmacSha1_80,
            Suite::AesCm256HmacSha1_32 => ProtectionProfile::Aes256CmHmacSha1_32,
            Suite::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
            Suite::AeadAes256Gcm => ProtectionProfile::AeadAes256Gcm,
        }
    }

    fn webrtc_context(key: &MasterKey) -> Context {
        let suite = key.suite();
        let (k, s) = key.key_and_salt().split_at(suite.key_len());
        Context::new(k, s, webrtc_profile(suite), None, None).expect("webrtc-srtp context")
    }

    /// Both implementations protect `plain` to the same bytes and each opens the other's.
    fn rtp_both_ways(
        ours_tx: &mut SrtpSender,
        ours_rx: &mut SrtpReceiver,
        theirs_tx: &mut Context,
        theirs_rx: &mut Context,
        plain: &[u8],
    ) {
        let ours = protect_rtp(ours_tx, plain);
        let theirs = theirs_tx.encrypt_rtp(plain).expect("webrtc encrypt_rtp");
        assert_eq!(ours, &theirs[..], "protected bytes differ");
        let opened = theirs_rx.decrypt_rtp(&ours).expect("webrtc decrypt_rtp");
        assert_eq!(&opened[..], plain);
        assert_eq!(accept_rtp(ours_rx, &theirs), Ok(plain.to_vec()));
    }

    #[test]
    fn differential_rtp_with_webrtc_srtp() {
        for suite in Suite::ALL {
            let key = MasterKey::random(suite);
            let (mut ours_tx, mut ours_rx) = (SrtpSender::new(&key), SrtpReceiver::new(&key));
            let (mut theirs_tx, mut theirs_rx) = (webrtc_context(&key), webrtc_context(&key));
            let packets = [
                rtp(100, 0xdead_beef, 0, 0, 160, 0),
                rtp(101, 0xdead_beef, 3, 0, 160, 0),
                rtp(102, 0xdead_beef, 0, 2, 160, 0),
                rtp(103, 0xdead_beef, 0, 0, 157, 3),
                rtp(104, 0xdead_beef, 15, 5, 33, 7),
                rtp(105, 0xdead_beef, 2, 1, 0, 0),
                rtp(7, 0x0102_0304, 1, 1, 1200, 0),
            ];
            for plain in &packets {
                rtp_both_ways(
                    &mut ours_tx,
                    &mut ours_rx,
                    &mut theirs_tx,
                    &mut theirs_rx,
                    plain,
                );
            }
        }
    }

    #[test]
    fn differential_sequence_wrap_with_webrtc_srtp() {
        for suite in Suite::ALL {
            let key = MasterKey::random(suite);
            let (mut ours_tx, mut ours_rx) = (SrtpSender::new(&key), SrtpReceiver::new(&key));
            let (mut theirs_tx, mut theirs_rx) = (webrtc_context(&key), webrtc_context(&key));
            const SSRC: u32 = 0x7777_0001;
            for n in 0..20u16 {
                let plain = rtp(65530u16.wrapping_add(n), SSRC, 1, 1, 160, 0);
                rtp_both_ways(
                    &mut ours_tx,
                    &mut ours_rx,
                    &mut theirs_tx,
                    &mut theirs_rx,
                    &plain,
                );
            }
            let sent = ours_tx
                .streams
                .get(SSRC)
                .and_then(|s| s.sent)
                .map(|w| w.top);
            assert_eq!(sent, Some((1 << 16) | 13), "sender ROC 1, seq 13");
            let received = ours_rx.streams.get(SSRC).and_then(|s| s.rtp).map(|w| w.top);
            assert_eq!(received, Some((1 << 16) | 13), "receiver ROC 1, seq 13");
        }
    }

    #[test]
    fn differential_rtcp_with_webrtc_srtp() {
        for suite in Suite::ALL {
            let key = MasterKey::random(suite);
            let (mut ours_tx, mut ours_rx) = (SrtpSender::new(&key), SrtpReceiver::new(&key));
            let (mut theirs_tx, mut theirs_rx) = (webrtc_context(&key), webrtc_context(&key));
            // webrtc-srtp numbers SRTCP from 1 per SSRC, we from 0 (RFC 3711 §3.4):
            // spend index 0 so both continue in step.
            let first = protect_rtcp(&mut ours_tx, &rtcp(0x4242, 0));
            assert_eq!(
                &theirs_rx.decrypt_rtcp(&first).expect("index 0")[..],
                &rtcp(0x4242, 0)[..]
            );
            for n in 1..6u8 {
                let plain = rtcp(0x4242, n);
                let ours = protect_rtcp(&mut ours_tx, &plain);
                let theirs = theirs_tx.encrypt_rtcp(&plain).expect("webrtc encrypt_rtcp");
                assert_eq!(ours, &theirs[..], "protected SRTCP differs for {suite}");
                assert_eq!(
                    &theirs_rx.decrypt_rtcp(&ours).expect("webrtc decrypt_rtcp")[..],
                    &plain[..]
                );
                assert_eq!(accept_rtcp(&mut ours_rx, &theirs), Ok(plain));
            }
        }
    }

    // -----------------------------------------------------------------------
    // Adversarial input and state
    // -----------------------------------------------------------------------

    #[test]
    fn tampering_fails_authentication() {
        for suite in Suite::ALL {
            let key = MasterKey::random(suite);
            let mut sender = SrtpSender::new(&key);
            let receiver = SrtpReceiver::new(&key);
            let wire = protect_rtp(&mut sender, &rtp(9, 0xabc, 1, 1, 64, 0));
            let header_len = 12 + 4 + 8;
            for at in [1, 5, 13, header_len, header_len + 40, wire.len() - 1] {
                let mut forged = wire.clone();
                forged[at] ^= 0x40;
                let mut buf = forged.clone();
                assert_eq!(
                    receiver.unprotect_rtp(&mut buf, forged.len()).err(),
                    Some(SrtpError::AuthFailed),
                    "{suite} byte {at}"
                );
                assert_eq!(buf, forged, "a rejected packet is left as received");
            }
            let mut wire_rtcp = protect_rtcp(&mut sender, &rtcp(0xabc, 1));
            let at = wire_rtcp.len() / 2;
            wire_rtcp[at] ^= 1;
            let len = wire_rtcp.len();
            assert_eq!(
                receiver.unprotect_rtcp(&mut wire_rtcp, len).err(),
                Some(SrtpError::AuthFailed)
            );
        }
    }

    #[test]
    fn wrong_key_fails_authentication() {
        for suite in Suite::ALL {
            let wire = protect_rtp(
                &mut SrtpSender::new(&MasterKey::random(suite)),
                &rtp(1, 2, 0, 0, 20, 0),
            );
            let mut other = SrtpReceiver::new(&MasterKey::random(suite));
            assert_eq!(accept_rtp(&mut other, &wire), Err(SrtpError::AuthFailed));
            let wire = protect_rtcp(&mut SrtpSender::new(&MasterKey::random(suite)), &rtcp(2, 0));
            assert_eq!(accept_rtcp(&mut other, &wire), Err(SrtpError::AuthFailed));
        }
    }

    #[test]
    fn replay_and_window() {
        for suite in Suite::ALL {
            let key = MasterKey::random(suite);
            let mut sender = SrtpSender::new(&key);
            let mut receiver = SrtpReceiver::new(&key);
            let wires: Vec<Vec<u8>> = (0..300u16)
                .map(|s| protect_rtp(&mut sender, &rtp(s, 5, 0, 0, 10, 0)))
                .collect();

            // Unprotect without commit changes nothing: the same packet opens again.
            for _ in 0..2 {
                let mut buf = wires[0].clone();
                let token = receiver
                    .unprotect_rtp(&mut buf, wires[0].len())
                    .expect("uncommitted");
                assert_eq!(
                    (token.ssrc(), token.index(), token.is_rtcp()),
                    (5, 0, false)
                );
            }
            assert_eq!(
                accept_rtp(&mut receiver, &wires[0]).map(|p| p.len()),
                Ok(22)
            );
            assert_eq!(
                accept_rtp(&mut receiver, &wires[0]),
                Err(SrtpError::Replayed)
            );

            // Out of order inside the window is fine, once.
            assert!(accept_rtp(&mut receiver, &wires[200]).is_ok());
            assert!(accept_rtp(&mut receiver, &wires[150]).is_ok());
            assert_eq!(
                accept_rtp(&mut receiver, &wires[150]),
                Err(SrtpError::Replayed)
            );
            assert!(
                accept_rtp(&mut receiver, &wires[73]).is_ok(),
                "127 behind the top"
            );
            assert_eq!(
                accept_rtp(&mut receiver, &wires[72]),
                Err(SrtpError::TooOld)
            );
            assert_eq!(accept_rtp(&mut receiver, &wires[1]), Err(SrtpError::TooOld));
            assert_eq!(
                accept_rtp(&mut receiver, &wires[200]),
                Err(SrtpError::Replayed)
            );
            // A jump past the whole window clears it.
            assert!(accept_rtp(&mut receiver, &wires[299]).is_ok());
            assert!(accept_rtp(&mut receiver, &wires[250]).is_ok());
            assert_eq!(
                accept_rtp(&mut receiver, &wires[171]),
                Err(SrtpError::TooOld)
            );

            // SRTCP has its own window per SSRC.
            let rtcps: Vec<Vec<u8>> = (0..3u8)
                .map(|n| protect_rtcp(&mut sender, &rtcp(5, n)))
                .collect();
            assert!(accept_rtcp(&mut receiver, &rtcps[1]).is_ok());
            assert!(accept_rtcp(&mut receiver, &rtcps[0]).is_ok());
            assert_eq!(
                accept_rtcp(&mut receiver, &rtcps[1]),
                Err(SrtpError::Replayed)
            );
            assert!(accept_rtcp(&mut receiver, &rtcps[2]).is_ok());
        }
    }

    #[test]
    fn commits_in_any_order() {
        let mut w = Window::new(1000);
        w.accept(1200); // jumps 200: the old bits fall out
        assert_eq!(w.check(1000), Err(SrtpError::TooOld));
        w.accept(1000); // too old to mark: ignored
        w.accept(1199);
        assert_eq!(w.check(1199), Err(SrtpError::Replayed));
        assert_eq!(w.check(1198), Ok(()));
        assert_eq!(w.check(1201), Ok(()));
        assert_eq!(w.top, 1200);
    }

    #[test]
    fn roc_guess_follows_rfc3711_appendix_a() {
        let at = |roc: u64, seq: u64| (roc << 16) | seq;
        assert_eq!(guess_index(at(0, 10), 11), Some(at(0, 11)));
        assert_eq!(guess_index(at(0, 10), 40000), None, "would need ROC -1");
        assert_eq!(guess_index(at(0, 10), 32778), Some(at(0, 32778)));
        assert_eq!(guess_index(at(3, 10), 65530), Some(at(2, 65530)));
        assert_eq!(guess_index(at(3, 65530), 5), Some(at(4, 5)));
        assert_eq!(guess_index(at(3, 65530), 65000), Some(at(3, 65000)));
        // s_l - 2^15 = 7232: below that the sequence number has wrapped.
        assert_eq!(guess_index(at(3, 40000), 7232), Some(at(3, 7232)));
        assert_eq!(guess_index(at(3, 40000), 7231), Some(at(4, 7231)));
        assert_eq!(guess_index(at(3, 10), 32778), Some(at(3, 32778)));
        assert_eq!(guess_index(at(3, 10), 32779), Some(at(2, 32779)));
    }

    #[test]
    fn sender_roc_handles_reordering_across_the_wrap() {
        for suite in [Suite::AesCm128HmacSha1_80, Suite::AeadAes128Gcm] {
            let key = MasterKey::random(suite);
            let mut sender = SrtpSender::new(&key);
            let mut receiver = SrtpReceiver::new(&key);
            let seqs = [
                65533u16, 65535, 2, 65534, 3, 1, 20000, 40000, 60000, 9000, 30000, 50000, 65535, 10,
            ];
            for seq in seqs {
                let plain = rtp(seq, 77, 0, 0, 20, 0);
                assert_eq!(
                    accept_rtp(&mut receiver, &protect_rtp(&mut sender, &plain)),
                    Ok(plain),
                    "seq {seq}"
                );
            }
            // 65533 -> 2 (ROC 1) -> 60000 -> 9000 (ROC 2) -> 65535 -> 10 (ROC 3)
            assert_eq!(
                sender.streams.get(77).and_then(|s| s.sent).map(|w| w.top),
                Some((3 << 16) | 10)
            );
        }
    }

    #[test]
    fn truncated_and_garbage_input_never_panics() {
        for suite in Suite::ALL {
            let key = MasterKey::random(suite);
            let mut sender = SrtpSender::new(&key);
            let receiver = SrtpReceiver::new(&key);
            let wire = protect_rtp(&mut sender, &rtp(1, 9, 2, 1, 16, 0));
            let wire_rtcp = protect_rtcp(&mut sender, &rtcp(9, 0));
            for len in 0..=40 {
                let mut buf = wire.clone();
                if len < wire.len() {
                    assert!(
                        receiver.unprotect_rtp(&mut buf, len).is_err(),
                        "{suite} len {len}"
                    );
                }
                let mut buf = wire_rtcp.clone();
                if len < wire_rtcp.len() {
                    assert!(
                        receiver.unprotect_rtcp(&mut buf, len).is_err(),
                        "{suite} len {len}"
                    );
                }
                for fill in [0x00u8, 0x80, 0x9f, 0xbf, 0xff] {
                    let mut buf = vec![fill; len + MAX_OVERHEAD];
                    assert!(receiver.unprotect_rtp(&mut buf, len).is_err());
                    assert!(receiver.unprotect_rtcp(&mut buf, len).is_err());
                    let _ = sender.protect_rtp(&mut buf, len);
                    let _ = sender.protect_rtcp(&mut buf, len);
                }
                // `len` past the end of the buffer.
                let mut small = vec![0x80; len];
                assert!(receiver.unprotect_rtp(&mut small, len + 1).is_err());
                assert!(receiver.unprotect_rtcp(&mut small, len + 1).is_err());
                assert!(sender.protect_rtp(&mut small, len + 1).is_err());
                assert!(sender.protect_rtcp(&mut small, len + 1).is_err());
            }
            let mut huge = [0x90u8; 64];
            assert_eq!(
                receiver.unprotect_rtp(&mut huge, usize::MAX).err(),
                Some(SrtpError::TooShort)
            );
            assert_eq!(
                sender.protect_rtp(&mut huge, usize::MAX).err(),
                Some(SrtpError::NoRoom)
            );
            assert_eq!(
                sender.protect_rtcp(&mut huge, usize::MAX).err(),
                Some(SrtpError::NoRoom)
            );
        }
    }

    #[test]
    fn malformed_headers_are_rejected() {
        let key = MasterKey::random(Suite::AesCm128HmacSha1_80);
        let mut sender = SrtpSender::new(&key);
        let cases: [(Vec<u8>, SrtpError); 5] = [
            (
                {
                    let mut p = rtp(1, 1, 0, 0, 20, 0);
                    p[0] = 0x40;
                    p
                },
                SrtpError::Malformed,
            ),
            (rtp(1, 1, 0, 0, 20, 0)[..11].to_vec(), SrtpError::TooShort),
            (
                {
                    let mut p = rtp(1, 1, 0, 0, 0, 0);
                    p[0] |= 0x0f;
                    p
                },
                SrtpError::Malformed,
            ),
            (
                {
                    let mut p = rtp(1, 1, 0, 2, 0, 0);
                    p[15] = 9;
                    p
                },
                SrtpError::Malformed,
            ),
            (
                {
                    let mut p = rtp(1, 1, 0, 0, 4, 9);
                    let n = p.len();
                    p[n - 1] = 14;
                    p
                },
                SrtpError::Malformed,
            ),
        ];
        for (plain, expected) in cases {
            let mut buf = plain.clone();
            buf.resize(plain.len() + 10, 0);
            assert_eq!(
                sender.protect_rtp(&mut buf, plain.len()).err(),
                Some(expected)
            );
        }
        let mut zero_pad = rtp(1, 1, 0, 0, 4, 2);
        let n = zero_pad.len();
        zero_pad[n - 1] = 0;
        let mut buf = zero_pad.clone();
        buf.resize(n + 10, 0);
        assert_eq!(
            sender.protect_rtp(&mut buf, n).err(),
            Some(SrtpError::Malformed)
        );
        let mut buf = [
            0x40, 200, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(
            sender.protect_rtcp(&mut buf, 8).err(),
            Some(SrtpError::Malformed)
        );
    }

    #[test]
    fn no_room_for_the_tag() {
        for suite in Suite::ALL {
            let mut sender = SrtpSender::new(&MasterKey::random(suite));
            let plain = rtp(1, 1, 0, 0, 20, 0);
            let mut buf = plain.clone();
            buf.resize(plain.len() + suite.rtp_overhead() - 1, 0);
            assert_eq!(
                sender.protect_rtp(&mut buf, plain.len()).err(),
                Some(SrtpError::NoRoom)
            );
            buf.push(0);
            assert_eq!(
                sender.protect_rtp(&mut buf, plain.len()),
                Ok(plain.len() + suite.rtp_overhead())
            );
            let plain = rtcp(1, 0);
            let mut buf = plain.clone();
            buf.resize(plain.len() + suite.rtcp_overhead() - 1, 0);
            assert_eq!(
                sender.protect_rtcp(&mut buf, plain.len()).err(),
                Some(SrtpError::NoRoom)
            );
            assert_eq!(
                sender.srtcp_index, 0,
                "a refused packet does not use an index"
            );
            buf.push(0);
            assert_eq!(
                sender.protect_rtcp(&mut buf, plain.len()),
                Ok(plain.len() + suite.rtcp_overhead())
            );
        }
    }

    #[test]
    fn more_ssrcs_than_slots() {
        for suite in [Suite::AesCm128HmacSha1_80, Suite::AeadAes256Gcm] {
            let key = MasterKey::random(suite);
            // One sending stack per source, as each peer is; the receiver is ours.
            let mut senders: std::collections::HashMap<u32, SrtpSender> =
                std::collections::HashMap::new();
            let mut receiver = SrtpReceiver::new(&key);
            let ssrcs = 1..=(SSRC_SLOTS as u32 + 4);
            // Interleave 12 SSRCs over 8 receiver slots. (An evicted SSRC comes back
            // with ROC 0 guessed: one that had wrapped would fail authentication, as
            // the type's documentation says; these stay below the wrap.)
            for round in 0..40u16 {
                for ssrc in ssrcs.clone() {
                    let seq = 1000u16.wrapping_add(round).wrapping_add(ssrc as u16);
                    let plain = rtp(seq, ssrc, 0, 0, 12, 0);
                    let sender = senders.entry(ssrc).or_insert_with(|| SrtpSender::new(&key));
                    let wire = protect_rtp(sender, &plain);
                    assert_eq!(
                        accept_rtp(&mut receiver, &wire),
                        Ok(plain),
                        "ssrc {ssrc} round {round}"
                    );
                    assert_eq!(accept_rtp(&mut receiver, &wire), Err(SrtpError::Replayed));
                }
            }
            assert_eq!(
                receiver.streams.entries.iter().flatten().count(),
                SSRC_SLOTS
            );
        }
    }

    /// The sender never encrypts one index twice: a sequence number sent
    /// already, one far behind, one behind the first across a wrap and a
    /// ninth SSRC are refused, and nothing is recorded for them.
    #[test]
    fn the_sender_never_reuses_an_index() {
        let key = MasterKey::random(Suite::AeadAes128Gcm);
        let mut sender = SrtpSender::new(&key);
        let mut buf = [0u8; 256];
        let mut send = |sender: &mut SrtpSender, seq: u16, ssrc: u32| {
            let plain = rtp(seq, ssrc, 0, 0, 20, 0);
            buf[..plain.len()].copy_from_slice(&plain);
            sender.protect_rtp(&mut buf, plain.len()).map(|_| ())
        };
        assert_eq!(send(&mut sender, 10, 1), Ok(()));
        assert_eq!(send(&mut sender, 10, 1), Err(SrtpError::Replayed));
        assert_eq!(send(&mut sender, 9, 1), Ok(()), "reordered, unused: fine");
        assert_eq!(send(&mut sender, 9, 1), Err(SrtpError::Replayed));
        assert_eq!(send(&mut sender, 500, 1), Ok(()));
        assert_eq!(send(&mut sender, 100, 1), Err(SrtpError::TooOld));
        assert_eq!(
            send(&mut sender, 501, 1),
            Ok(()),
            "the refusals recorded nothing"
        );
        // Behind the first packet across a wrap: no ROC -1.
        assert_eq!(send(&mut sender, 3, 2), Ok(()));
        assert_eq!(send(&mut sender, 65_000, 2), Err(SrtpError::TooOld));
        for ssrc in 3..=SSRC_SLOTS as u32 {
            assert_eq!(send(&mut sender, 1, ssrc), Ok(()));
        }
        assert_eq!(send(&mut sender, 1, 99), Err(SrtpError::TooManySources));
        assert_eq!(send(&mut sender, 502, 1), Ok(()), "known sources go on");
    }

    #[test]
    fn table_evicts_least_recently_used() {
        let mut table: Table<RxState> = Table::new();
        let top = |table: &Table<RxState>, ssrc| table.get(ssrc).and_then(|s| s.rtp).map(|w| w.top);
        for ssrc in 0..SSRC_SLOTS as u32 {
            table.touch(ssrc).rtp = Some(Window::new(u64::from(ssrc)));
        }
        table.touch(0); // now 1 is the oldest
        table.touch(99);
        assert!(table.get(1).is_none());
        assert_eq!(top(&table, 0), Some(0));
        assert_eq!(top(&table, 99), None);
        assert_eq!(top(&table, 2), Some(2));
    }

    #[test]
    fn bundled_senders_start_their_srtcp_index_where_told_and_never_go_back() {
        let key = MasterKey::random(Suite::AesCm128HmacSha1_80);
        let mut sender = SrtpSender::new(&key);
        sender.start_srtcp_index_at(1 << 30);
        assert_eq!(sender.srtcp_index, 1 << 30);
        sender.start_srtcp_index_at(5);
        assert_eq!(sender.srtcp_index, 1 << 30, "never back");
        sender.start_srtcp_index_at(u32::MAX);
        assert_eq!(sender.srtcp_index, SRTCP_INDEX_MASK, "31 bits");
    }
}
