//! ICE-lite connectivity checks: STUN Binding requests checked and answered
//! in place (RFC 8445 §7.3 for a lite agent, RFC 8489 message format,
//! short-term credentials, RFC 7675 consent).
//!
//! Written here rather than taken from a STUN crate: a check is answered on
//! the media worker, so reading one must not allocate, and the relay needs
//! only the Binding method with four attributes in and three out. Every
//! length is checked against the datagram before it is read; anything that
//! is not a well-formed, authenticated Binding request for one of the
//! leg's credentials is refused without an answer (no reflection, no
//! information for a prober).

use std::net::SocketAddr;

use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

/// The magic cookie (RFC 8489 §5).
const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Header length.
const HEADER_LEN: usize = 20;
/// Binding request.
const BINDING_REQUEST: u16 = 0x0001;
/// Binding success response.
const BINDING_SUCCESS: u16 = 0x0101;
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_PRIORITY: u16 = 0x0024;
const ATTR_USE_CANDIDATE: u16 = 0x0025;
const ATTR_FINGERPRINT: u16 = 0x8028;
const ATTR_ICE_CONTROLLED: u16 = 0x8029;
const ATTR_ICE_CONTROLLING: u16 = 0x802A;
/// HMAC-SHA1 length.
const INTEGRITY_LEN: usize = 20;
/// XOR'd into the CRC-32 of FINGERPRINT ("STUN").
const FINGERPRINT_XOR: u32 = 0x5354_554E;
/// Longest ufrag or password the relay keeps (RFC 8839 allows 256; real
/// agents use 4 to 32 characters, and a longer one is refused when the SDP
/// is read).
pub const MAX_ICE_TEXT: usize = 64;
/// Largest STUN message read; a check is about 100 bytes.
pub const MAX_STUN_LEN: usize = 548;

/// Whether a datagram is STUN by its first byte (RFC 7983: 0–3).
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| *b <= 3)
}

/// Whether a datagram is DTLS by its first byte (RFC 7983: 20–63).
pub fn is_dtls(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| (20..=63).contains(b))
}

/// A ufrag or password: ICE characters, at most [`MAX_ICE_TEXT`] bytes,
/// kept inline so leg settings stay plain data.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IceText {
    bytes: [u8; MAX_ICE_TEXT],
    len: u8,
}

impl std::fmt::Debug for IceText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IceText({} bytes)", self.len)
    }
}

/// Stored as its text (high availability).
impl serde::Serialize for IceText {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for IceText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::new(&text).ok_or_else(|| serde::de::Error::custom("not an ICE ufrag or password"))
    }
}

impl IceText {
    /// Reads a ufrag or password: 1 to 64 `ice-char`s (RFC 8839:
    /// letters, digits, `+` and `/`). Anything else is refused.
    pub fn new(text: &str) -> Option<Self> {
        let raw = text.as_bytes();
        if raw.is_empty()
            || raw.len() > MAX_ICE_TEXT
            || !raw
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
        {
            return None;
        }
        let mut bytes = [0; MAX_ICE_TEXT];
        bytes[..raw.len()].copy_from_slice(raw);
        Some(Self {
            bytes,
            len: raw.len() as u8,
        })
    }

    /// The text's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The text (always ASCII).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

/// One set of credentials of a leg: the relay's ufrag and password (what
/// the peer's checks are authenticated with) and the peer's ufrag, when
/// its SDP gave one (the second half of the USERNAME it sends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IceCredentials {
    /// The relay's `a=ice-ufrag` toward this peer.
    pub local_ufrag: IceText,
    /// The relay's `a=ice-pwd` toward this peer.
    pub local_pwd: IceText,
    /// The peer's `a=ice-ufrag`.
    pub remote_ufrag: Option<IceText>,
}

/// An authenticated Binding request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingRequest {
    /// Its transaction id, echoed in the response.
    pub transaction: [u8; 12],
    /// USE-CANDIDATE: the controlling agent nominates this pair.
    pub use_candidate: bool,
    /// The sender claims the controlling role (a lite agent's peer must).
    pub controlling: bool,
}

/// Why a STUN datagram got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StunRefusal {
    /// Not a well-formed STUN message (length, cookie, attributes).
    Malformed,
    /// Well-formed, but not a Binding request (a response, an indication
    /// or another method): nothing to answer.
    NotARequest,
    /// No USERNAME or MESSAGE-INTEGRITY, a USERNAME for other credentials,
    /// a wrong MESSAGE-INTEGRITY or FINGERPRINT.
    Unauthenticated,
}

fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

/// HMAC-SHA1 over `parts`, keyed with a short-term password (RFC 8489
/// §9.1.1: the password itself, its characters being plain ASCII).
fn integrity(key: &[u8], parts: &[&[u8]]) -> [u8; INTEGRITY_LEN] {
    // HMAC takes keys of any length: this cannot fail.
    let Ok(mut mac) = <Hmac<Sha1> as Mac>::new_from_slice(key) else {
        return [0; INTEGRITY_LEN];
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The message's header with its length field set to `length`, as the
/// integrity and fingerprint computations see it.
fn header_with_length(buf: &[u8], length: usize) -> [u8; HEADER_LEN] {
    let mut header = [0; HEADER_LEN];
    header.copy_from_slice(&buf[..HEADER_LEN]);
    header[2..4].copy_from_slice(&(length as u16).to_be_bytes());
    header
}

/// Checks a Binding request against any of `credentials` (the current set
/// and, during an ICE restart, the previous one) and returns it with the
/// index of the set that authenticated it.
pub fn check_binding(
    buf: &[u8],
    credentials: &[IceCredentials],
) -> Result<(BindingRequest, usize), StunRefusal> {
    if buf.len() < HEADER_LEN || buf.len() > MAX_STUN_LEN {
        return Err(StunRefusal::Malformed);
    }
    let kind = read_u16(buf, 0).ok_or(StunRefusal::Malformed)?;
    let length = usize::from(read_u16(buf, 2).ok_or(StunRefusal::Malformed)?);
    if kind & 0xC000 != 0
        || read_u32(buf, 4) != Some(MAGIC_COOKIE)
        || length % 4 != 0
        || HEADER_LEN + length != buf.len()
    {
        return Err(StunRefusal::Malformed);
    }
    let mut transaction = [0; 12];
    transaction.copy_from_slice(&buf[8..HEADER_LEN]);
    let mut username: Option<&[u8]> = None;
    let mut integrity_at: Option<usize> = None;
    let mut fingerprint_at: Option<usize> = None;
    let mut use_candidate = false;
    let mut controlling = false;
    let mut at = HEADER_LEN;
    while at < buf.len() {
        let attribute = read_u16(buf, at).ok_or(StunRefusal::Malformed)?;
        let value_len = usize::from(read_u16(buf, at + 2).ok_or(StunRefusal::Malformed)?);
        let value_at = at + 4;
        let padded = value_len.div_ceil(4) * 4;
        let value = buf
            .get(value_at..value_at + value_len)
            .ok_or(StunRefusal::Malformed)?;
        if value_at + padded > buf.len() {
            return Err(StunRefusal::Malformed);
        }
        if fingerprint_at.is_some() {
            // FINGERPRINT is last (RFC 8489 §14.7).
            return Err(StunRefusal::Malformed);
        }
        match attribute {
            // After MESSAGE-INTEGRITY only FINGERPRINT counts (§14.5).
            ATTR_FINGERPRINT if value_len == 4 => fingerprint_at = Some(at),
            _ if integrity_at.is_some() => {}
            ATTR_USERNAME if value_len <= 2 * MAX_ICE_TEXT + 1 => username = Some(value),
            ATTR_MESSAGE_INTEGRITY if value_len == INTEGRITY_LEN => integrity_at = Some(at),
            ATTR_USE_CANDIDATE => use_candidate = true,
            ATTR_ICE_CONTROLLING => controlling = true,
            ATTR_USERNAME | ATTR_MESSAGE_INTEGRITY | ATTR_FINGERPRINT => {
                return Err(StunRefusal::Malformed);
            }
            // Not needed to answer: a lite agent is always controlled and
            // takes the controlling agent's priorities as they come.
            ATTR_PRIORITY | ATTR_ICE_CONTROLLED => {}
            // SOFTWARE, GOOG-* and the rest: comprehension-required ones
            // the relay does not know would earn a 420, but ICE sends none.
            _ => {}
        }
        at = value_at + padded;
    }
    // ICE agents always send FINGERPRINT (RFC 8445 §7.2.2): without it
    // the datagram may be anything that happens to start like STUN.
    let Some(fp) = fingerprint_at else {
        return Err(StunRefusal::Malformed);
    };
    {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header_with_length(buf, fp + 8 - HEADER_LEN));
        crc.update(&buf[HEADER_LEN..fp]);
        let expected = crc.finalize() ^ FINGERPRINT_XOR;
        if read_u32(buf, fp + 4) != Some(expected) {
            return Err(StunRefusal::Unauthenticated);
        }
    }
    // Indications (keep-alives) and responses are never answered.
    if kind != BINDING_REQUEST {
        return Err(StunRefusal::NotARequest);
    }
    let (Some(username), Some(mi)) = (username, integrity_at) else {
        return Err(StunRefusal::Unauthenticated);
    };
    let given = &buf[mi + 4..mi + 4 + INTEGRITY_LEN];
    let header = header_with_length(buf, mi + 4 + INTEGRITY_LEN - HEADER_LEN);
    for (index, set) in credentials.iter().enumerate() {
        if !username_matches(username, set) {
            continue;
        }
        let expected = integrity(set.local_pwd.as_bytes(), &[&header, &buf[HEADER_LEN..mi]]);
        if bool::from(expected.ct_eq(given)) {
            return Ok((
                BindingRequest {
                    transaction,
                    use_candidate,
                    controlling,
                },
                index,
            ));
        }
    }
    Err(StunRefusal::Unauthenticated)
}

/// USERNAME of a check to the relay: `relay-ufrag:peer-ufrag` (RFC 8445
/// §7.2.2); the peer's half is checked when its SDP gave one.
fn username_matches(username: &[u8], set: &IceCredentials) -> bool {
    let local = set.local_ufrag.as_bytes();
    let Some(rest) = username
        .strip_prefix(local)
        .and_then(|rest| rest.strip_prefix(b":"))
    else {
        return false;
    };
    set.remote_ufrag
        .is_none_or(|remote| remote.as_bytes() == rest)
}

/// Writes a Binding request as a controlling ICE agent sends it: USERNAME
/// (`username`, the answerer's ufrag then the sender's), PRIORITY,
/// ICE-CONTROLLING, USE-CANDIDATE when `nominate`, MESSAGE-INTEGRITY keyed
/// with the answerer's password, FINGERPRINT. For `baton load`'s WebRTC
/// legs and for tests; `None` if `buf` is too small or the username longer
/// than a ufrag pair can be.
pub fn write_request(
    buf: &mut [u8],
    transaction: &[u8; 12],
    username: &str,
    pwd: &IceText,
    nominate: bool,
    tie_breaker: u64,
) -> Option<usize> {
    let name = username.as_bytes();
    if name.len() > 2 * MAX_ICE_TEXT + 1 {
        return None;
    }
    let padded = name.len().div_ceil(4) * 4;
    let total = HEADER_LEN
        + (4 + padded)
        + (4 + 4)
        + (4 + 8)
        + if nominate { 4 } else { 0 }
        + (4 + INTEGRITY_LEN)
        + 8;
    let out = buf.get_mut(..total)?;
    out.fill(0);
    out[0..2].copy_from_slice(&BINDING_REQUEST.to_be_bytes());
    out[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out[8..HEADER_LEN].copy_from_slice(transaction);
    let mut at = HEADER_LEN;
    let attribute = |out: &mut [u8], kind: u16, value: &[u8], at: &mut usize| {
        out[*at..*at + 2].copy_from_slice(&kind.to_be_bytes());
        out[*at + 2..*at + 4].copy_from_slice(&(value.len() as u16).to_be_bytes());
        out[*at + 4..*at + 4 + value.len()].copy_from_slice(value);
        *at += 4 + value.len().div_ceil(4) * 4;
    };
    attribute(out, ATTR_USERNAME, name, &mut at);
    // Type preference of a host candidate, as the peer would compute it.
    attribute(out, ATTR_PRIORITY, &2_130_706_431u32.to_be_bytes(), &mut at);
    attribute(
        out,
        ATTR_ICE_CONTROLLING,
        &tie_breaker.to_be_bytes(),
        &mut at,
    );
    if nominate {
        attribute(out, ATTR_USE_CANDIDATE, &[], &mut at);
    }
    out[2..4].copy_from_slice(&((at + 4 + INTEGRITY_LEN - HEADER_LEN) as u16).to_be_bytes());
    let mac = integrity(pwd.as_bytes(), &[&out[..at]]);
    attribute(out, ATTR_MESSAGE_INTEGRITY, &mac, &mut at);
    out[2..4].copy_from_slice(&((at + 8 - HEADER_LEN) as u16).to_be_bytes());
    let crc = crc32fast::hash(&out[..at]) ^ FINGERPRINT_XOR;
    attribute(out, ATTR_FINGERPRINT, &crc.to_be_bytes(), &mut at);
    Some(at)
}

/// Whether `buf` is a Binding success response to `transaction`.
pub fn is_success_for(buf: &[u8], transaction: &[u8; 12]) -> bool {
    buf.len() >= HEADER_LEN
        && read_u16(buf, 0) == Some(BINDING_SUCCESS)
        && read_u32(buf, 4) == Some(MAGIC_COOKIE)
        && buf[8..HEADER_LEN] == transaction[..]
}

/// Writes the success response to `request` into `buf` (which held the
/// request): XOR-MAPPED-ADDRESS of `from`, MESSAGE-INTEGRITY with the
/// relay's password, FINGERPRINT. Returns its length, or `None` if `buf`
/// is too small (it never is: responses are at most 80 bytes).
pub fn write_success(
    buf: &mut [u8],
    request: &BindingRequest,
    from: SocketAddr,
    local_pwd: &IceText,
) -> Option<usize> {
    let address_len = match from {
        SocketAddr::V4(_) => 8,
        SocketAddr::V6(_) => 20,
    };
    let total = HEADER_LEN + (4 + address_len) + (4 + INTEGRITY_LEN) + 8;
    let out = buf.get_mut(..total)?;
    out[0..2].copy_from_slice(&BINDING_SUCCESS.to_be_bytes());
    out[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out[8..HEADER_LEN].copy_from_slice(&request.transaction);
    let mut at = HEADER_LEN;
    out[at..at + 2].copy_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
    out[at + 2..at + 4].copy_from_slice(&(address_len as u16).to_be_bytes());
    out[at + 4] = 0;
    let port = from.port() ^ (MAGIC_COOKIE >> 16) as u16;
    out[at + 6..at + 8].copy_from_slice(&port.to_be_bytes());
    match from {
        SocketAddr::V4(v4) => {
            out[at + 5] = 0x01;
            let ip = u32::from(*v4.ip()) ^ MAGIC_COOKIE;
            out[at + 8..at + 12].copy_from_slice(&ip.to_be_bytes());
        }
        SocketAddr::V6(v6) => {
            out[at + 5] = 0x02;
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            mask[4..].copy_from_slice(&request.transaction);
            for (i, byte) in v6.ip().octets().iter().enumerate() {
                out[at + 8 + i] = byte ^ mask[i];
            }
        }
    }
    at += 4 + address_len;
    // MESSAGE-INTEGRITY covers the header with the length up to and
    // including itself.
    out[2..4].copy_from_slice(&((at + 4 + INTEGRITY_LEN - HEADER_LEN) as u16).to_be_bytes());
    let mac = integrity(local_pwd.as_bytes(), &[&out[..at]]);
    out[at..at + 2].copy_from_slice(&ATTR_MESSAGE_INTEGRITY.to_be_bytes());
    out[at + 2..at + 4].copy_from_slice(&(INTEGRITY_LEN as u16).to_be_bytes());
    out[at + 4..at + 4 + INTEGRITY_LEN].copy_from_slice(&mac);
    at += 4 + INTEGRITY_LEN;
    out[2..4].copy_from_slice(&((at + 8 - HEADER_LEN) as u16).to_be_bytes());
    let crc = crc32fast::hash(&out[..at]) ^ FINGERPRINT_XOR;
    out[at..at + 2].copy_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
    out[at + 2..at + 4].copy_from_slice(&4u16.to_be_bytes());
    out[at + 4..at + 8].copy_from_slice(&crc.to_be_bytes());
    Some(at + 8)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use stun_rs::attributes::ice::{IceControlling, Priority, UseCandidate};
    use stun_rs::attributes::stun::{Fingerprint, MessageIntegrity, UserName, XorMappedAddress};
    use stun_rs::methods::BINDING;
    use stun_rs::{
        DecoderContextBuilder, HMACKey, MessageClass, MessageDecoderBuilder, MessageEncoderBuilder,
        StunMessageBuilder,
    };

    use super::*;

    fn credentials(local: &str, pwd: &str, remote: Option<&str>) -> IceCredentials {
        IceCredentials {
            local_ufrag: IceText::new(local).unwrap(),
            local_pwd: IceText::new(pwd).unwrap(),
            remote_ufrag: remote.map(|r| IceText::new(r).unwrap()),
        }
    }

    /// A check as another ICE stack writes it.
    fn request(username: &str, pwd: &str, nominate: bool) -> Vec<u8> {
        let mut builder = StunMessageBuilder::new(BINDING, MessageClass::Request)
            .with_attribute(UserName::new(username).unwrap())
            .with_attribute(IceControlling::from(7u64))
            .with_attribute(Priority::from(1_853_824_767u32));
        if nominate {
            builder = builder.with_attribute(UseCandidate::default());
        }
        let message = builder
            .with_attribute(MessageIntegrity::new(HMACKey::new_short_term(pwd).unwrap()))
            .with_attribute(Fingerprint::default())
            .build();
        let mut buf = vec![0; 512];
        let len = MessageEncoderBuilder::default()
            .build()
            .encode(&mut buf, &message)
            .unwrap();
        buf.truncate(len);
        buf
    }

    /// RFC 5769 §2.1: the sample request (USERNAME `evtj:h6vY`, password
    /// `VOkJxbRl1RmTxUk/WvJxBt`), padded with spaces as the RFC does.
    const RFC_5769_REQUEST: &str = "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e20746573\
        7420636c69656e74002400046e0001ff80290008932ff9b151263b3600060009\
        6576746a3a68367659202020000800149aeaa70cbfd8cb56781ef2b5b2d3f249\
        c1b571a280280004e57a3bcf";

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    #[test]
    fn the_rfc_5769_sample_request_is_authenticated() {
        let sample = hex(RFC_5769_REQUEST);
        assert_eq!(sample.len(), 108);
        let ok = credentials("evtj", "VOkJxbRl1RmTxUk/WvJxBt", Some("h6vY"));
        let (request, index) = check_binding(&sample, &[ok]).unwrap();
        assert_eq!(index, 0);
        assert_eq!(request.transaction, sample[8..20]);
        // The sample is from a controlled agent and nominates nothing.
        assert!(!request.use_candidate);
        assert!(!request.controlling);
        for wrong in [
            credentials("evtj", "VOkJxbRl1RmTxUk/WvJxBT", Some("h6vY")),
            credentials("evtk", "VOkJxbRl1RmTxUk/WvJxBt", Some("h6vY")),
            credentials("evtj", "VOkJxbRl1RmTxUk/WvJxBt", Some("h6vZ")),
        ] {
            assert_eq!(
                check_binding(&sample, &[wrong]),
                Err(StunRefusal::Unauthenticated)
            );
        }
        // During an ICE restart the old set still answers.
        let (_, index) = check_binding(
            &sample,
            &[credentials("new1", "abcdefghijklmnopqrstuv", None), ok],
        )
        .unwrap();
        assert_eq!(index, 1);
    }

    #[test]
    fn a_check_from_another_stack_is_answered_and_the_answer_verifies() {
        let set = credentials("rlyA", "relaypassword0123456789", Some("peer"));
        let check = request("rlyA:peer", "relaypassword0123456789", true);
        let (request, _) = check_binding(&check, &[set]).unwrap();
        assert!(request.use_candidate && request.controlling);
        for from in [
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 32853),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 40000),
        ] {
            let mut buf = check.clone();
            buf.resize(1500, 0);
            let len = write_success(&mut buf, &request, from, &set.local_pwd).unwrap();
            let context = DecoderContextBuilder::default()
                .with_key(HMACKey::new_short_term("relaypassword0123456789").unwrap())
                .with_validation()
                .build();
            let (message, used) = MessageDecoderBuilder::default()
                .with_context(context)
                .build()
                .decode(&buf[..len])
                .unwrap();
            assert_eq!(used, len);
            assert_eq!(message.class(), MessageClass::SuccessResponse);
            assert_eq!(message.transaction_id().as_ref(), &request.transaction);
            let mapped = message
                .get::<XorMappedAddress>()
                .unwrap()
                .as_xor_mapped_address()
                .unwrap();
            assert_eq!(*mapped.socket_address(), from);
            assert!(message.get::<Fingerprint>().is_some());
        }
    }

    #[test]
    fn tampered_truncated_and_foreign_messages_are_refused() {
        let set = credentials("rlyA", "relaypassword0123456789", None);
        let check = request("rlyA:peer", "relaypassword0123456789", false);
        assert!(check_binding(&check, &[set]).is_ok());
        // Any flipped bit fails the cookie, a length, the fingerprint or
        // the integrity, except in the FINGERPRINT's type: an unknown
        // attribute after MESSAGE-INTEGRITY is ignored (RFC 8489 §14.5),
        // and the check is still authentic without a fingerprint.
        let fingerprint_type = check.len() - 8..check.len() - 6;
        for i in (0..check.len()).filter(|i| !fingerprint_type.contains(i)) {
            let mut bad = check.clone();
            bad[i] ^= 0x10;
            assert!(check_binding(&bad, &[set]).is_err(), "byte {i}");
        }
        for cut in 0..check.len() {
            assert!(check_binding(&check[..cut], &[set]).is_err());
        }
        assert_eq!(
            check_binding(&request("rlyA:peer", "otherpassword", false), &[set]),
            Err(StunRefusal::Unauthenticated)
        );
        // No credentials at all.
        let bare = StunMessageBuilder::new(BINDING, MessageClass::Request).build();
        let mut buf = [0; 64];
        let len = MessageEncoderBuilder::default()
            .build()
            .encode(&mut buf, &bare)
            .unwrap();
        assert!(check_binding(&buf[..len], &[set]).is_err());
        // A response is not answered.
        let mut response = check.clone();
        response.resize(1500, 0);
        let (req, _) = check_binding(&check, &[set]).unwrap();
        let len = write_success(
            &mut response,
            &req,
            "127.0.0.1:9".parse().unwrap(),
            &set.local_pwd,
        )
        .unwrap();
        assert_eq!(
            check_binding(&response[..len], &[set]),
            Err(StunRefusal::NotARequest)
        );
        assert!(check_binding(&[0u8; MAX_STUN_LEN + 4], &[set]).is_err());
    }

    #[test]
    fn the_relays_own_requests_are_checks_another_stack_accepts() {
        let set = credentials("rlyA", "relaypassword0123456789", Some("peer"));
        let mut buf = [0u8; 256];
        let len = write_request(&mut buf, &[7; 12], "rlyA:peer", &set.local_pwd, true, 99).unwrap();
        let (request, _) = check_binding(&buf[..len], &[set]).unwrap();
        assert!(request.use_candidate && request.controlling);
        let context = DecoderContextBuilder::default()
            .with_key(HMACKey::new_short_term("relaypassword0123456789").unwrap())
            .with_validation()
            .build();
        let (message, _) = MessageDecoderBuilder::default()
            .with_context(context)
            .build()
            .decode(&buf[..len])
            .unwrap();
        assert_eq!(message.class(), MessageClass::Request);
        assert!(message.get::<UseCandidate>().is_some());
        let mut reply = [0u8; 256];
        reply[..len].copy_from_slice(&buf[..len]);
        let n = write_success(
            &mut reply,
            &request,
            "127.0.0.1:9".parse().unwrap(),
            &set.local_pwd,
        )
        .unwrap();
        assert!(is_success_for(&reply[..n], &[7; 12]));
        assert!(!is_success_for(&reply[..n], &[8; 12]));
    }

    #[test]
    fn ice_text_is_bounded_to_ice_characters() {
        assert!(IceText::new("abc+/09XYZ").is_some());
        assert!(IceText::new("").is_none());
        assert!(IceText::new("has space").is_none());
        assert!(IceText::new("colon:").is_none());
        assert!(IceText::new(&"a".repeat(MAX_ICE_TEXT)).is_some());
        assert!(IceText::new(&"a".repeat(MAX_ICE_TEXT + 1)).is_none());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(0u8..=255, 0..600)) {
            let set = credentials("rlyA", "relaypassword0123456789", None);
            let _ = check_binding(&bytes, &[set]);
        }
    }
}
