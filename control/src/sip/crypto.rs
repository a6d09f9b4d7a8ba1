//! SDES (RFC 4568): the `a=crypto` lines of an SRTP m= line, read from a
//! party's body and written by the relay for its own keys.
//!
//! Each line offers one suite and the key its sender will *send* with:
//! `a=crypto:<tag> <suite> inline:<base64 key||salt>[|lifetime][|MKI:length]
//! [session parameters]`. An answerer picks one line, answers with the same
//! tag and suite and its own key. The relay terminates SRTP on every leg,
//! so it answers a party's offer itself and offers its own keys to the
//! other party; nothing of one party's keys ever reaches the other.
//!
//! What the relay cannot honour makes a line unacceptable, never ignored:
//! MKI (its field would sit in every packet), a key lifetime a call could
//! reach, a key derivation rate other than 0, unencrypted or
//! unauthenticated SRTP/SRTCP, FEC parameters, and any session parameter it
//! does not know (RFC 4568 §6.3: an unknown parameter means the line is not
//! understood).
//!
//! A WebRTC party (`UDP/TLS/RTP/SAVPF`) gets no keys in SDP: the relay is
//! an ICE-lite agent toward it and the keys come from a DTLS handshake
//! with the certificate its `a=fingerprint` names ([`PartyDtls`]).

use std::fmt;

use baton_proto::v1;
use baton_relay::core::dtls::{DtlsParams, DtlsRole, Fingerprint};
use baton_relay::core::srtp::{MasterKey, Suite};
use baton_relay::core::stream::{LegCrypto, LegKeys};
use baton_relay::core::stun::{IceCredentials, IceText};

use crate::sip::sdp::Media;

/// Most `a=crypto` lines one m= line may carry; real offers have 1 to 8.
pub const MAX_CRYPTO_LINES: usize = 16;
/// Longest `a=crypto` value read (a 46-byte key in base64 is 64 characters).
const MAX_CRYPTO_LEN: usize = 512;
/// The shortest key lifetime accepted: longer than any call sends (2^31
/// packets is 497 days at 50 packets a second). A shorter one would need
/// re-keying that SDES can only do by a re-offer the relay cannot force.
const MIN_LIFETIME_LOG2: u32 = 31;

/// Why an `a=crypto` line cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decline {
    /// A suite the relay does not implement.
    UnknownSuite(String),
    /// Excluded by the request's SDES options.
    Excluded(Suite),
    /// The key is not base64, or not the suite's length.
    BadKey,
    /// More than one key (RFC 4568 §6.1: several keys need MKI).
    SeveralKeys,
    /// A master key identifier: not supported.
    Mki,
    /// A key lifetime short enough that a call could reach it.
    Lifetime(String),
    /// A session parameter the relay cannot honour.
    SessionParameter(String),
}

impl fmt::Display for Decline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownSuite(name) => write!(f, "unknown crypto suite {name}"),
            Self::Excluded(suite) => write!(f, "suite {} excluded by SDES options", suite.name()),
            Self::BadKey => f.write_str("the key is not base64 of the suite's key and salt length"),
            Self::SeveralKeys => f.write_str("several keys (MKI) are not supported"),
            Self::Mki => f.write_str("a master key identifier (MKI) is not supported"),
            Self::Lifetime(value) => write!(
                f,
                "key lifetime {value} is shorter than 2^{MIN_LIFETIME_LOG2} packets"
            ),
            Self::SessionParameter(name) => write!(f, "session parameter {name} is not supported"),
        }
    }
}

/// One `a=crypto` line of a body.
#[derive(Debug, Clone)]
pub struct CryptoLine {
    /// The line's tag (RFC 4568: 1 to 9 digits).
    pub tag: u32,
    /// The key the sender of the body sends with, or why the line is not
    /// usable.
    pub key: Result<MasterKey, Decline>,
}

/// Which suites a leg may use, from a request's SDES options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SdesPolicy {
    /// Only these suites (empty: any).
    pub only: Vec<Suite>,
    /// Never these.
    pub excluded: Vec<Suite>,
    /// Write keys with base64 padding.
    pub pad: bool,
    /// Write keys with the lifetime 2^31.
    pub lifetime: bool,
    /// A plain RTP answer to the relay's SRTP offer makes that leg plain
    /// (rtpengine's `OSRTP=accept`); without it such an answer is refused.
    pub accept_plain: bool,
}

impl SdesPolicy {
    /// Whether `suite` may be used.
    pub fn allows(&self, suite: Suite) -> bool {
        (self.only.is_empty() || self.only.contains(&suite)) && !self.excluded.contains(&suite)
    }

    /// The suites the relay offers to a party when nothing else says which:
    /// every suite it implements that the policy allows, in its order of
    /// preference.
    pub fn default_offer(&self) -> Vec<Suite> {
        Suite::ALL.into_iter().filter(|s| self.allows(*s)).collect()
    }
}

/// Parses the value of an `a=crypto` attribute (after `crypto:`). A value
/// that breaks the grammar is an error; a well-formed line the relay cannot
/// use comes back with its [`Decline`].
pub fn parse(value: &str, policy: &SdesPolicy) -> Result<CryptoLine, String> {
    if value.len() > MAX_CRYPTO_LEN {
        return Err(format!(
            "a=crypto is {} bytes, more than {MAX_CRYPTO_LEN}",
            value.len()
        ));
    }
    let mut fields = value.split_ascii_whitespace();
    let (Some(tag), Some(suite), Some(key_params)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err("a=crypto is not `TAG SUITE inline:KEY [PARAMS]`".to_owned());
    };
    let tag = (!tag.is_empty() && tag.len() <= 9 && tag.bytes().all(|b| b.is_ascii_digit()))
        .then(|| tag.parse::<u32>().ok())
        .flatten()
        .ok_or_else(|| "a=crypto tag is not 1 to 9 digits".to_owned())?;
    let session_parameters: Vec<&str> = fields.collect();
    let key = read_key(suite, key_params, &session_parameters, policy)?;
    Ok(CryptoLine { tag, key })
}

fn read_key(
    suite_name: &str,
    key_params: &str,
    session_parameters: &[&str],
    policy: &SdesPolicy,
) -> Result<Result<MasterKey, Decline>, String> {
    if !key_params.starts_with("inline:") {
        return Err("a=crypto key method is not `inline:`".to_owned());
    }
    let Some(suite) = Suite::from_name(suite_name) else {
        return Ok(Err(Decline::UnknownSuite(clip(suite_name))));
    };
    if !policy.allows(suite) {
        return Ok(Err(Decline::Excluded(suite)));
    }
    if key_params.contains(';') {
        return Ok(Err(Decline::SeveralKeys));
    }
    let inline = &key_params["inline:".len()..];
    let mut parts = inline.split('|');
    let encoded = parts.next().unwrap_or_default();
    let parts: Vec<&str> = parts.collect();
    if parts.iter().any(|part| part.contains(':')) {
        return Ok(Err(Decline::Mki));
    }
    if let Some(short) = parts.iter().find(|part| !lifetime_is_long(part)) {
        return Ok(Err(Decline::Lifetime(clip(short))));
    }
    for parameter in session_parameters {
        let name = parameter.split('=').next().unwrap_or_default();
        let acceptable = match name {
            // A key derivation rate of 0 is the default: derive once.
            "KDR" => parameter.strip_prefix("KDR=") == Some("0"),
            // A replay window size hint: the relay's window is fixed.
            "WSH" => true,
            _ => false,
        };
        if !acceptable {
            return Ok(Err(Decline::SessionParameter(clip(parameter))));
        }
    }
    let Some(bytes) = decode_base64(encoded) else {
        return Ok(Err(Decline::BadKey));
    };
    Ok(MasterKey::new(suite, &bytes).map_err(|_| Decline::BadKey))
}

/// `2^N` or a decimal count, at least 2^31 packets.
fn lifetime_is_long(text: &str) -> bool {
    if let Some(exponent) = text.strip_prefix("2^") {
        return exponent
            .parse::<u32>()
            .is_ok_and(|e| (MIN_LIFETIME_LOG2..=64).contains(&e));
    }
    text.parse::<u64>()
        .is_ok_and(|n| n >= 1 << MIN_LIFETIME_LOG2)
}

fn clip(text: &str) -> String {
    crate::status::excerpt(text).to_string()
}

/// A key from the control protocol, or what is wrong with it.
pub fn key_from_message(key: &v1::SrtpKey) -> Result<MasterKey, String> {
    let suite = Suite::from_name(key.suite.trim())
        .ok_or_else(|| format!("unknown SRTP suite {}", clip(&key.suite)))?;
    MasterKey::new(suite, &key.key).map_err(|_| {
        format!(
            "a {} key is {} bytes (key then salt), not {}",
            suite.name(),
            suite.master_len(),
            key.key.len()
        )
    })
}

/// A key as operators write it, for `suite`: base64 of key and salt, or
/// `@FILE` holding that (a key on a command line is visible to every user
/// of the machine in `/proc/PID/cmdline` and stays in shell histories).
/// Only the encoding is checked here; [`key_from_message`] checks the rest.
pub fn key_message_from_text(suite: &str, key: &str) -> Result<v1::SrtpKey, String> {
    let text = match key.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the {suite} key from {path}: {e}"))?,
        None => key.to_owned(),
    };
    let key = decode_base64(text.trim()).ok_or_else(|| format!("the {suite} key is not base64"))?;
    Ok(v1::SrtpKey {
        suite: suite.to_owned(),
        key,
    })
}

/// A key as the control protocol carries it.
pub fn key_to_message(key: &MasterKey) -> v1::SrtpKey {
    v1::SrtpKey {
        suite: key.suite().name().to_owned(),
        key: key.key_and_salt().to_vec(),
    }
}

/// The `a=crypto` value the relay writes for its own key: without base64
/// padding unless `policy.pad` (rtpengine's default too: some devices
/// refuse `=` in a key), with `|2^31` if `policy.lifetime`.
pub fn render(tag: u32, key: &MasterKey, policy: &SdesPolicy) -> String {
    let encoded = encode_base64(key.key_and_salt());
    let encoded = if policy.pad {
        encoded.as_str()
    } else {
        encoded.trim_end_matches('=')
    };
    let lifetime = if policy.lifetime { "|2^31" } else { "" };
    format!(
        "crypto:{tag} {} inline:{encoded}{lifetime}",
        key.suite().name()
    )
}

/// The first usable line of an offer, in the offer's order (the offerer's
/// preference, RFC 4568 §7.1.1).
pub fn choose(lines: &[CryptoLine]) -> Option<(u32, MasterKey)> {
    lines.iter().find_map(|l| match &l.key {
        Ok(key) => Some((l.tag, *key)),
        Err(_) => None,
    })
}

/// Why no line of an offer is usable, for an error.
pub fn why_none(lines: &[CryptoLine]) -> String {
    if lines.is_empty() {
        return "no a=crypto line (SDES)".to_owned();
    }
    let reasons: Vec<String> = lines
        .iter()
        .filter_map(|l| l.key.as_ref().err().map(|d| format!("tag {}: {d}", l.tag)))
        .collect();
    format!("no usable a=crypto line ({})", reasons.join("; "))
}

/// Fresh relay keys for an offer: one per suite, tags from 1.
pub fn offer_keys(suites: &[Suite]) -> Vec<(u32, MasterKey)> {
    (1u32..)
        .zip(suites)
        .map(|(tag, &suite)| (tag, MasterKey::random(suite)))
        .collect()
}

/// The RTP transports the relay speaks on a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Transport {
    /// `RTP/AVP`.
    #[default]
    Avp,
    /// `RTP/AVPF`.
    Avpf,
    /// `RTP/SAVP`.
    Savp,
    /// `RTP/SAVPF`.
    Savpf,
    /// `UDP/TLS/RTP/SAVP`: DTLS-SRTP.
    DtlsSavp,
    /// `UDP/TLS/RTP/SAVPF`: DTLS-SRTP with feedback, what browsers use.
    DtlsSavpf,
}

impl Transport {
    /// Reads an m= line's transport (case-insensitive); `None` for one the
    /// relay does not speak.
    pub fn parse(proto: &str) -> Option<Self> {
        [
            Self::Avp,
            Self::Avpf,
            Self::Savp,
            Self::Savpf,
            Self::DtlsSavp,
            Self::DtlsSavpf,
        ]
        .into_iter()
        .find(|t| t.name().eq_ignore_ascii_case(proto))
    }

    /// The SDP name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Avp => "RTP/AVP",
            Self::Avpf => "RTP/AVPF",
            Self::Savp => "RTP/SAVP",
            Self::Savpf => "RTP/SAVPF",
            Self::DtlsSavp => "UDP/TLS/RTP/SAVP",
            Self::DtlsSavpf => "UDP/TLS/RTP/SAVPF",
        }
    }

    /// Whether it is SRTP with keys in the SDP (SDES).
    pub fn is_srtp(self) -> bool {
        matches!(self, Self::Savp | Self::Savpf)
    }

    /// Whether it is DTLS-SRTP.
    pub fn is_dtls(self) -> bool {
        matches!(self, Self::DtlsSavp | Self::DtlsSavpf)
    }
}

/// One party's SRTP on one stream: its transport, the keys the relay
/// offered it, and the keys negotiated with it. The relay's key toward a
/// party stays the same across re-offers (so the party's SRTP context, and
/// the index it tracks, carries on) unless the suite changes. On a WebRTC
/// leg, the ICE-lite credentials and the DTLS identity instead of keys.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PartyCrypto {
    /// The transport of this party's leg.
    pub transport: Transport,
    /// The relay's keys last offered to this party, by tag, until it
    /// answers.
    pub offered: Vec<(u32, MasterKey)>,
    /// The tag of the negotiated `a=crypto` line; 0 when not from SDP.
    pub tag: u32,
    /// The relay's key toward this party.
    pub relay_key: Option<MasterKey>,
    /// The key this party sends with.
    pub peer_key: Option<MasterKey>,
    /// ICE-lite on this party's leg: the relay's credentials and the
    /// party's ufrag.
    pub ice: Option<IceCredentials>,
    /// DTLS-SRTP on this party's leg.
    pub dtls: Option<PartyDtls>,
}

/// A party's DTLS-SRTP: the certificate it must show and who connects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartyDtls {
    /// The party's `a=fingerprint`, once its body gave one.
    pub peer: Option<Fingerprint>,
    /// The relay's role, once negotiated.
    pub role: Option<DtlsRole>,
    /// The relay sent `a=setup:actpass` and waits for the answer's role.
    pub offered: bool,
}

/// The relay's ICE credentials toward a party (ICE forced on a non-WebRTC
/// leg) after that party's body: its ufrag learned, or on a new one (an
/// ICE restart) fresh credentials for both sides; a body without ICE ends
/// ICE toward the party.
fn peer_ice(current: IceCredentials, media: &Media) -> Option<IceCredentials> {
    // No ICE in the body: a party that never did ICE (a phone answering
    // the relay's forced offer without it) or stopped (a re-offer without
    // it) is not gated by ICE any more.
    let ufrag = media.webrtc.ice_ufrag.as_deref().and_then(IceText::new)?;
    Some(match current.remote_ufrag {
        None => IceCredentials {
            remote_ufrag: Some(ufrag),
            ..current
        },
        Some(known) if known == ufrag => current,
        Some(_) => fresh_ice(Some(ufrag)),
    })
}

/// What a request asks of the relay toward a party it offers to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebRtcToward {
    /// ICE-lite even on a non-WebRTC transport.
    pub force_ice: bool,
    /// The relay's DTLS role, instead of `actpass`.
    pub role: Option<DtlsRole>,
}

/// Fresh ICE credentials of the relay toward a party (RFC 8445 §5.3: at
/// least 24 bits of randomness in the ufrag, 128 in the password).
pub fn fresh_ice(remote_ufrag: Option<IceText>) -> IceCredentials {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let mut text = |len: usize| -> IceText {
        let value: String = (0..len)
            .map(|_| char::from(CHARS[rng.random_range(0..CHARS.len())]))
            .collect();
        IceText::new(&value).expect("letters and digits within the bound are ICE text")
    };
    IceCredentials {
        local_ufrag: text(8),
        local_pwd: text(24),
        remote_ufrag,
    }
}

impl PartyCrypto {
    /// The data plane's settings for this party's leg.
    pub fn leg_crypto(&self) -> LegCrypto {
        if self.transport.is_dtls() {
            // The keys come from the handshake.
            return LegCrypto::AwaitingKeys;
        }
        if !self.transport.is_srtp() {
            return LegCrypto::Plain;
        }
        match (self.peer_key, self.relay_key) {
            (Some(peer), Some(relay)) => LegCrypto::Srtp(LegKeys { peer, relay }),
            _ => LegCrypto::AwaitingKeys,
        }
    }

    /// The data plane's DTLS settings for this party's leg, once the
    /// party's fingerprint and the relay's role are known.
    pub fn dtls_params(&self) -> Option<DtlsParams> {
        let dtls = self.dtls.filter(|_| self.transport.is_dtls())?;
        Some(DtlsParams {
            role: dtls.role?,
            peer: dtls.peer?,
        })
    }

    /// Whether `other` would configure the data plane the same way.
    pub fn same_leg_as(&self, other: &PartyCrypto) -> bool {
        self.transport.is_srtp() == other.transport.is_srtp()
            && self.transport.is_dtls() == other.transport.is_dtls()
            && self.peer_key == other.peer_key
            && self.relay_key == other.relay_key
            && self.ice == other.ice
            && self.dtls_params() == other.dtls_params()
    }

    /// Sets the transport the relay offers this party (its first body
    /// from the relay): fresh ICE credentials on a WebRTC leg, or when
    /// `webrtc.force_ice` forces ICE on another transport; the relay's
    /// `a=setup` (actpass unless `webrtc.role` insists).
    pub fn offer_toward(&mut self, transport: Transport, webrtc: WebRtcToward) {
        self.transport = transport;
        if transport.is_dtls() || webrtc.force_ice {
            self.ice.get_or_insert_with(|| fresh_ice(None));
        } else {
            self.ice = None;
        }
        self.dtls = transport.is_dtls().then_some(PartyDtls {
            peer: None,
            role: webrtc.role,
            offered: true,
        });
    }

    /// Reads a WebRTC party's m= line: its ICE ufrag (new credentials for
    /// both sides on an ICE restart), its fingerprint, and the DTLS roles
    /// (RFC 8842: an offer's `actpass` makes the relay passive; an answer
    /// to the relay's `actpass` says which end the party took; a re-offer
    /// keeps the established roles).
    fn receive_webrtc(&mut self, transport: Transport, media: &Media) -> Result<(), String> {
        let line = media.line;
        let lines = &media.webrtc;
        if !media.rtcp_mux {
            return Err(format!(
                "SDP line {line}: {} without a=rtcp-mux: baton's WebRTC legs need RTP and RTCP on one port",
                transport.name()
            ));
        }
        let (Some(ufrag), Some(pwd)) = (&lines.ice_ufrag, &lines.ice_pwd) else {
            return Err(format!(
                "SDP line {line}: {} without a=ice-ufrag and a=ice-pwd: baton's WebRTC legs need ICE",
                transport.name()
            ));
        };
        let peer_ufrag = IceText::new(ufrag)
            .ok_or_else(|| format!("SDP line {line}: a=ice-ufrag is not 1 to 64 ICE characters"))?;
        if IceText::new(pwd).is_none() || pwd.len() < 22 {
            return Err(format!(
                "SDP line {line}: a=ice-pwd is not 22 to 64 ICE characters (RFC 8839)"
            ));
        }
        let fingerprint = lines
            .fingerprint
            .as_deref()
            .ok_or_else(|| {
                format!(
                    "SDP line {line}: {} without a=fingerprint",
                    transport.name()
                )
            })
            .and_then(|value| {
                Fingerprint::parse(value).map_err(|e| format!("SDP line {line}: {e}"))
            })?;
        let previous = self.dtls.filter(|_| self.transport.is_dtls());
        let answering_our_offer = previous.is_some_and(|d| d.offered);
        // RFC 4145 §4: without a=setup an offer is active, an answer
        // passive.
        let setup = lines
            .setup
            .as_deref()
            .unwrap_or(if answering_our_offer {
                "passive"
            } else {
                "active"
            })
            .to_ascii_lowercase();
        let insisted = previous.filter(|d| d.offered).and_then(|d| d.role);
        let role = match (setup.as_str(), answering_our_offer) {
            ("active", true) if insisted == Some(DtlsRole::Client) => {
                return Err(format!(
                    "SDP line {line}: a=setup:active answers the relay's a=setup:active"
                ));
            }
            ("passive", true) if insisted == Some(DtlsRole::Server) => {
                return Err(format!(
                    "SDP line {line}: a=setup:passive answers the relay's a=setup:passive"
                ));
            }
            ("active", _) => DtlsRole::Server,
            ("passive", _) => DtlsRole::Client,
            ("actpass", false) => match previous {
                // Same certificate: the association and its roles stay.
                Some(PartyDtls {
                    peer: Some(known),
                    role: Some(role),
                    ..
                }) if known == fingerprint => role,
                _ => DtlsRole::Server,
            },
            ("actpass", true) => {
                return Err(format!(
                    "SDP line {line}: a=setup:actpass in an answer (RFC 8842: the answerer picks active or passive)"
                ));
            }
            (other, _) => {
                return Err(format!(
                    "SDP line {line}: a=setup:{} is not supported (active, passive, actpass)",
                    crate::status::excerpt(other)
                ));
            }
        };
        let ice = match self.ice {
            // Same peer credentials: the relay's stay too.
            Some(current) if current.remote_ufrag == Some(peer_ufrag) => current,
            // The relay's offer had no peer ufrag yet: this is its answer.
            Some(mut current) if current.remote_ufrag.is_none() && answering_our_offer => {
                current.remote_ufrag = Some(peer_ufrag);
                current
            }
            // New peer credentials: an ICE restart (RFC 8445 §9), both
            // sides change.
            Some(_) | None => fresh_ice(Some(peer_ufrag)),
        };
        *self = Self {
            transport,
            ice: Some(ice),
            dtls: Some(PartyDtls {
                peer: Some(fingerprint),
                role: Some(role),
                offered: false,
            }),
            ..Self::default()
        };
        Ok(())
    }

    /// Reads a body's m= line from this party: its transport and, on SRTP,
    /// its keys. A line that answers what the relay offered takes the
    /// offered key of its tag; otherwise it is an offer, answered with the
    /// first usable line (the relay's key kept if the suite is the same).
    pub fn receive(
        &mut self,
        transport: Transport,
        media: &Media,
        policy: &SdesPolicy,
    ) -> Result<(), String> {
        let (crypto, media_line) = (&media.crypto, media.line);
        if transport.is_dtls() {
            return self.receive_webrtc(transport, media);
        }
        // The party's first body after the relay offered it SRTP keys: its
        // answer. (Later bodies may be offers of its own, which the relay
        // answers; they are told apart by the keys the party already has.)
        let first_answer =
            self.transport.is_srtp() && self.peer_key.is_none() && !self.offered.is_empty();
        if !transport.is_srtp() {
            if first_answer && !policy.accept_plain {
                return Err(format!(
                    "SDP line {media_line}: a {} answer to the relay's {} offer: accepting plain RTP \
                     toward a party offered SRTP needs OSRTP=accept (sdes.accept_plain)",
                    transport.name(),
                    self.transport.name()
                ));
            }
            *self = Self {
                transport,
                ice: self.ice.and_then(|ice| peer_ice(ice, media)),
                ..Self::default()
            };
            return Ok(());
        }
        let mut lines = Vec::with_capacity(crypto.len());
        for (value, number) in crypto {
            lines.push(parse(value, policy).map_err(|e| format!("SDP line {number}: {e}"))?);
        }
        // An answer takes the relay's key of its tag and suite, or — from
        // an answerer that renumbered the tag — of its suite.
        let offered = |line: &CryptoLine, by_tag: bool| {
            let theirs = line.key.as_ref().ok()?;
            let (_, ours) = self.offered.iter().find(|(tag, ours)| {
                (!by_tag || *tag == line.tag) && ours.suite() == theirs.suite()
            })?;
            Some((line.tag, *ours, *theirs))
        };
        let answered = lines
            .iter()
            .find_map(|line| offered(line, true))
            .or_else(|| {
                first_answer
                    .then(|| lines.iter().find_map(|line| offered(line, false)))
                    .flatten()
            });
        let (tag, ours, theirs) = match answered {
            Some(found) => found,
            None if first_answer => {
                return Err(format!(
                    "SDP line {media_line}: the answer's a=crypto lines match no suite the relay offered ({})",
                    why_none(&lines)
                ));
            }
            None => {
                let (tag, theirs) = choose(&lines)
                    .ok_or_else(|| format!("SDP line {media_line}: {}", why_none(&lines)))?;
                let ours = match self.relay_key {
                    Some(key) if key.suite() == theirs.suite() => key,
                    Some(_) | None => MasterKey::random(theirs.suite()),
                };
                (tag, ours, theirs)
            }
        };
        *self = Self {
            transport,
            offered: Vec::new(),
            tag,
            relay_key: Some(ours),
            peer_key: Some(theirs),
            // ICE toward an SDES party is kept if the party does it.
            ice: self.ice.and_then(|ice| peer_ice(ice, media)),
            dtls: None,
        };
        Ok(())
    }

    /// Takes the ICE credentials and DTLS settings of the stream whose
    /// BUNDLE transport this one shares: one transport, one set (RFC 8843
    /// §5).
    pub fn share_transport_of(&mut self, owner: &PartyCrypto) {
        self.ice = owner.ice;
        self.dtls = owner.dtls;
    }

    /// A WebRTC leg: ICE and DTLS-SRTP (the only kind that bundles).
    pub fn is_webrtc(&self) -> bool {
        self.ice.is_some() && self.transport.is_dtls()
    }

    /// The `a=crypto` values for a body the relay sends this party: the
    /// negotiated line once there is one, else an offer of every allowed
    /// suite (kept until answered, so a body sent again offers the same
    /// keys). Empty on a plain leg.
    pub fn lines_toward(&mut self, policy: &SdesPolicy, relay: &Fingerprint) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(ice) = self.ice {
            lines.push(format!("ice-ufrag:{}", ice.local_ufrag.as_str()));
            lines.push(format!("ice-pwd:{}", ice.local_pwd.as_str()));
        }
        if let Some(dtls) = self.dtls.as_mut().filter(|_| self.transport.is_dtls()) {
            lines.push(format!("fingerprint:{relay}"));
            let setup = match dtls.role {
                Some(DtlsRole::Server) => "passive",
                Some(DtlsRole::Client) => "active",
                None => "actpass",
            };
            if dtls.peer.is_none() {
                // Until the party answers, this body is the relay's offer.
                dtls.offered = true;
            }
            lines.push(format!("setup:{setup}"));
            return lines;
        }
        if !self.transport.is_srtp() {
            return lines;
        }
        if let (Some(ours), true) = (self.relay_key, self.tag != 0) {
            self.offered = vec![(self.tag, ours)];
        } else if self.offered.is_empty() {
            self.offered = offer_keys(&policy.default_offer());
        }
        lines.extend(
            self.offered
                .iter()
                .map(|(tag, key)| render(*tag, key, policy)),
        );
        lines
    }
}

// Base64 (RFC 4648, with padding) by hand: it is twenty lines, and the
// control plane has no other use for a base64 crate.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Base64 with padding, as SDES writes keys.
pub fn encode_base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes base64 with or without padding (SDES keys are written both
/// ways in the field).
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for byte in text.bytes() {
        let value = ALPHABET.iter().position(|&c| c == byte)?;
        acc = acc << 6 | value as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits & 0xff) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_80: &str = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";

    #[test]
    fn base64_round_trips_every_length() {
        for len in 0..50u8 {
            let bytes: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(decode_base64(&encode_base64(&bytes)), Some(bytes));
        }
        assert!(decode_base64("a").is_none());
        assert!(decode_base64("ab!d").is_none());
    }

    #[test]
    fn an_rfc_4568_line_is_read() {
        let line = parse(
            &format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_80}|2^20|1:4 FEC_ORDER=FEC_SRTP"),
            &SdesPolicy::default(),
        )
        .expect("well-formed");
        assert_eq!(line.tag, 1);
        assert!(matches!(line.key, Err(Decline::Mki)));
        let line = parse(
            &format!("7 AES_CM_128_HMAC_SHA1_32 inline:{KEY_80}|2^31 KDR=0 WSH=128"),
            &SdesPolicy::default(),
        )
        .expect("well-formed");
        let key = line.key.expect("usable");
        assert_eq!(key.suite(), Suite::AesCm128HmacSha1_32);
        assert_eq!(encode_base64(key.key_and_salt()), KEY_80);
        assert_eq!(
            render(7, &key, &SdesPolicy::default()),
            format!("crypto:7 AES_CM_128_HMAC_SHA1_32 inline:{KEY_80}")
        );
        let gcm = MasterKey::new(Suite::AeadAes128Gcm, &[7; 28]).expect("key");
        let padded = SdesPolicy {
            pad: true,
            lifetime: true,
            ..SdesPolicy::default()
        };
        assert!(render(1, &gcm, &padded).ends_with("=|2^31"));
        assert!(!render(1, &gcm, &SdesPolicy::default()).contains('='));
    }

    #[test]
    fn what_the_relay_cannot_honour_is_declined_not_ignored() {
        let policy = SdesPolicy::default();
        let declined = |text: &str| parse(text, &policy).expect("well-formed").key.err();
        let k = KEY_80;
        assert!(matches!(
            declined(&format!("1 F8_128_HMAC_SHA1_80 inline:{k}")),
            Some(Decline::UnknownSuite(_))
        ));
        assert!(matches!(
            declined(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k}|2^20")),
            Some(Decline::Lifetime(_))
        ));
        assert!(matches!(
            declined(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k}|1048576")),
            Some(Decline::Lifetime(_))
        ));
        assert!(matches!(
            declined(&format!(
                "1 AES_CM_128_HMAC_SHA1_80 inline:{k} UNENCRYPTED_SRTCP"
            )),
            Some(Decline::SessionParameter(_))
        ));
        assert!(matches!(
            declined(&format!(
                "1 AES_CM_128_HMAC_SHA1_80 inline:{k} UNAUTHENTICATED_SRTP"
            )),
            Some(Decline::SessionParameter(_))
        ));
        assert!(matches!(
            declined(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k} KDR=24")),
            Some(Decline::SessionParameter(_))
        ));
        assert!(matches!(
            declined(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k};inline:{k}")),
            Some(Decline::SeveralKeys)
        ));
        assert!(matches!(
            declined("1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ="),
            Some(Decline::BadKey)
        ));
        assert!(matches!(
            declined("1 AEAD_AES_256_GCM inline:!!!!"),
            Some(Decline::BadKey)
        ));
        let only_32 = SdesPolicy {
            only: vec![Suite::AesCm128HmacSha1_32],
            ..SdesPolicy::default()
        };
        assert!(matches!(
            parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k}"), &only_32)
                .expect("ok")
                .key,
            Err(Decline::Excluded(Suite::AesCm128HmacSha1_80))
        ));
    }

    #[test]
    fn malformed_lines_are_errors() {
        let policy = SdesPolicy::default();
        for bad in [
            "",
            "1",
            "1 AES_CM_128_HMAC_SHA1_80",
            "x AES_CM_128_HMAC_SHA1_80 inline:abcd",
            "1234567890 AES_CM_128_HMAC_SHA1_80 inline:abcd",
            "1 AES_CM_128_HMAC_SHA1_80 uri:abcd",
        ] {
            assert!(parse(bad, &policy).is_err(), "{bad:?}");
        }
        assert!(parse(&"1 ".repeat(400), &policy).is_err());
    }

    #[test]
    fn the_first_usable_line_is_chosen() {
        let policy = SdesPolicy::default();
        let lines: Vec<CryptoLine> = [
            format!("1 F8_128_HMAC_SHA1_80 inline:{KEY_80}"),
            format!("2 AES_CM_128_HMAC_SHA1_32 inline:{KEY_80}"),
            format!("3 AES_CM_128_HMAC_SHA1_80 inline:{KEY_80}"),
        ]
        .iter()
        .map(|l| parse(l, &policy).expect("ok"))
        .collect();
        let (tag, key) = choose(&lines).expect("one usable");
        assert_eq!((tag, key.suite()), (2, Suite::AesCm128HmacSha1_32));
        assert!(why_none(&lines[..1]).contains("unknown crypto suite"));
    }

    #[test]
    fn offered_keys_are_fresh_per_suite() {
        let keys = offer_keys(&SdesPolicy::default().default_offer());
        assert_eq!(keys.len(), Suite::ALL.len());
        assert_eq!(keys[0].0, 1);
        assert_ne!(keys[0].1.key_and_salt(), keys[1].1.key_and_salt());
    }
}
