//! SDP bodies (RFC 8866, offer/answer per RFC 3264): read what the relay
//! needs from them and rewrite them to point at the relay.
//!
//! Written by hand rather than with the `sdp` crate (webrtc-rs, 0.17): that
//! crate refuses whole bodies whose m= lines use a transport outside its list,
//! and real calls carry them — `TCP/BFCP` on video conferencing endpoints,
//! `TCP/MSRP` in RCS, `TCP/RTP/AVP`, T.38 over `TCP/TLS/udptl` — and its
//! errors do not say which line is wrong. A relay must pass such lines
//! through untouched and name the line it cannot accept. So the body is kept
//! as its lines: every line the relay does not rewrite goes out byte for
//! byte as it came in, and only the lines the relay owns are parsed.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use baton_proto::v1;

use crate::status::excerpt;

/// Most lines in a body; real ones have tens.
const MAX_LINES: usize = 2000;

/// How large a body may be. Every body from a request is checked against
/// these before anything else is read or kept, so a hostile offer costs
/// little CPU and no memory beyond its own bytes. The defaults pass the
/// largest real bodies by a wide margin (a browser's audio + video + data
/// offer: about 8 KB, 3 m= lines, 40 formats on its video line, 150 a=
/// lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdpLimits {
    /// Bytes in the body (`sdp-max-bytes`).
    pub max_bytes: usize,
    /// m= lines (`sdp-max-media`).
    pub max_media: usize,
    /// Formats on one m= line (`sdp-max-formats`).
    pub max_formats: usize,
    /// a= lines in the whole body (`sdp-max-attributes`).
    pub max_attributes: usize,
}

impl Default for SdpLimits {
    fn default() -> Self {
        Self {
            max_bytes: 65_536,
            max_media: 32,
            max_formats: 128,
            max_attributes: 1000,
        }
    }
}

/// Which limit a body broke, as a refusal reason for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpLimit {
    /// [`SdpLimits::max_bytes`].
    Bytes,
    /// [`SdpLimits::max_media`].
    Media,
    /// [`SdpLimits::max_formats`].
    Formats,
    /// [`SdpLimits::max_attributes`].
    Attributes,
}

impl SdpLimit {
    /// The counter's reason label.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Bytes => "sdp_too_large",
            Self::Media => "sdp_too_many_media",
            Self::Formats => "sdp_too_many_formats",
            Self::Attributes => "sdp_too_many_attributes",
        }
    }
}

/// A line the relay cannot accept, by its number in the body (from 1; 0 for
/// the body as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpError {
    /// 1-based line number, 0 when no single line is at fault.
    pub line: usize,
    /// What is wrong.
    pub message: String,
    /// The relay understands the line but does not support it (as opposed
    /// to a malformed line).
    pub unsupported: bool,
    /// The body broke a size limit.
    pub limit: Option<SdpLimit>,
}

impl SdpError {
    fn at(line: usize, message: impl Into<String>) -> Self {
        Self {
            line,
            message: message.into(),
            unsupported: false,
            limit: None,
        }
    }

    fn unsupported(line: usize, message: impl Into<String>) -> Self {
        Self {
            line,
            message: message.into(),
            unsupported: true,
            limit: None,
        }
    }

    fn over(line: usize, limit: SdpLimit, message: String) -> Self {
        Self {
            line,
            message,
            unsupported: false,
            limit: Some(limit),
        }
    }
}

impl fmt::Display for SdpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "SDP: {}", self.message)
        } else {
            write!(f, "SDP line {}: {}", self.line, self.message)
        }
    }
}

/// One `x=value` line and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    kind: u8,
    value: String,
    /// 1-based number in the parsed body; 0 for lines the relay added.
    number: usize,
}

impl Line {
    fn new(kind: u8, value: impl Into<String>) -> Self {
        Self {
            kind,
            value: value.into(),
            number: 0,
        }
    }

    fn attribute(&self) -> Option<(&str, Option<&str>)> {
        if self.kind != b'a' {
            return None;
        }
        Some(match self.value.split_once(':') {
            Some((name, value)) => (name, Some(value)),
            None => (self.value.as_str(), None),
        })
    }

    fn is_attribute(&self, name: &str) -> bool {
        self.attribute().is_some_and(|(n, _)| n == name)
    }
}

/// A media direction (RFC 3264 §5.1, §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Sends and receives.
    SendRecv,
    /// Only sends.
    SendOnly,
    /// Only receives.
    RecvOnly,
    /// Neither.
    Inactive,
}

impl Direction {
    /// From whether the party sends and whether it receives.
    pub fn from_flags(send: bool, receive: bool) -> Self {
        match (send, receive) {
            (true, true) => Self::SendRecv,
            (true, false) => Self::SendOnly,
            (false, true) => Self::RecvOnly,
            (false, false) => Self::Inactive,
        }
    }

    /// Whether the party sends media.
    pub fn sends(self) -> bool {
        matches!(self, Self::SendRecv | Self::SendOnly)
    }

    /// Whether the party receives media.
    pub fn receives(self) -> bool {
        matches!(self, Self::SendRecv | Self::RecvOnly)
    }

    /// The attribute name.
    pub fn name(self) -> &'static str {
        match self {
            Self::SendRecv => "sendrecv",
            Self::SendOnly => "sendonly",
            Self::RecvOnly => "recvonly",
            Self::Inactive => "inactive",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "sendrecv" => Self::SendRecv,
            "sendonly" => Self::SendOnly,
            "recvonly" => Self::RecvOnly,
            "inactive" => Self::Inactive,
            _ => return None,
        })
    }
}

/// ICE attributes (RFC 8839): meaningless once the relay is the media
/// endpoint, and harmful if left (the far end would check candidates that
/// bypass the relay).
pub(crate) const ICE_ATTRIBUTES: [&str; 9] = [
    "ice-ufrag",
    "ice-pwd",
    "ice-options",
    "ice-lite",
    "ice-mismatch",
    "ice-pacing",
    "candidate",
    "remote-candidates",
    "end-of-candidates",
];

/// RTP payload types assigned statically by RFC 3551 §6: usable without an
/// rtpmap line.
const STATIC_PAYLOAD_TYPES: [(u32, &str, u32, u32); 24] = [
    (0, "PCMU", 8000, 1),
    (3, "GSM", 8000, 1),
    (4, "G723", 8000, 1),
    (5, "DVI4", 8000, 1),
    (6, "DVI4", 16000, 1),
    (7, "LPC", 8000, 1),
    (8, "PCMA", 8000, 1),
    (9, "G722", 8000, 1),
    (10, "L16", 44100, 2),
    (11, "L16", 44100, 1),
    (12, "QCELP", 8000, 1),
    (13, "CN", 8000, 1),
    (14, "MPA", 90000, 0),
    (15, "G728", 8000, 1),
    (16, "DVI4", 11025, 1),
    (17, "DVI4", 22050, 1),
    (18, "G729", 8000, 1),
    (25, "CelB", 90000, 0),
    (26, "JPEG", 90000, 0),
    (28, "nv", 90000, 0),
    (31, "H261", 90000, 0),
    (32, "MPV", 90000, 0),
    (33, "MP2T", 90000, 0),
    (34, "H263", 90000, 0),
];

/// A payload type an SDP body listed without a=rtpmap: relayed by number,
/// with no name or clock rate to write or to match by.
pub fn is_unnamed(codec: &v1::Codec) -> bool {
    codec.name.is_empty() && codec.clock_rate == 0
}

/// The codec RFC 3551 assigns to a static payload type.
pub fn static_codec(payload_type: u32) -> Option<v1::Codec> {
    STATIC_PAYLOAD_TYPES
        .iter()
        .find(|(pt, ..)| *pt == payload_type)
        .map(|&(pt, name, rate, channels)| v1::Codec {
            payload_type: pt,
            name: name.to_owned(),
            clock_rate: rate,
            channels: if channels > 1 { channels } else { 0 },
            fmtp: String::new(),
        })
}

/// A media section to take into a new body: `Ok(j)` is the body's own m=
/// line `j`, `Err((other, k))` another body's m= line `k`.
pub type Pick<'a> = Result<usize, (&'a Sdp, usize)>;

/// A parsed SDP body, kept as its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    /// Session-level lines, `v=` first.
    session: Vec<Line>,
    /// One per m= line: the m= line first, then its media-level lines.
    media: Vec<Vec<Line>>,
}

/// What the relay reads from one m= line.
#[derive(Debug, Clone, PartialEq)]
pub struct Media {
    /// Media type: "audio", "video", …
    pub kind: String,
    /// The m= port; 0 for a disabled or rejected stream.
    pub port: u16,
    /// The transport, e.g. "RTP/AVP".
    pub proto: String,
    /// The format list as written.
    pub formats: Vec<String>,
    /// Codecs of an RTP stream, in format order.
    pub codecs: Vec<v1::Codec>,
    /// The sender's RTP address: c= address and m= port. `None` when the
    /// port is 0 or the address is unspecified (0.0.0.0, old-style hold).
    pub rtp: Option<SocketAddr>,
    /// The sender's RTCP address from `a=rtcp`, if given.
    pub rtcp: Option<SocketAddr>,
    /// `a=rtcp-mux` is present.
    pub rtcp_mux: bool,
    /// The direction, media level over session level, sendrecv by default;
    /// an unspecified c= address counts as inactive.
    pub direction: Direction,
    /// `a=ptime`, if given.
    pub ptime: Option<u32>,
    /// Line number of the m= line.
    pub line: usize,
    /// The values of its `a=crypto` lines (SDES, RFC 4568) with their line
    /// numbers, on an SRTP line; at most [`MAX_CRYPTO_LINES`].
    pub crypto: Vec<(String, usize)>,
    /// WebRTC attributes (media level, else session level).
    pub webrtc: WebRtcLines,
    /// The keyframe requests the line's `a=rtcp-fb` offer: (PLI, FIR).
    pub keyframe_feedback: (bool, bool),
}

/// A WebRTC peer's transport attributes of one m= line: ICE credentials
/// (RFC 8839), DTLS fingerprint and role (RFC 8122, RFC 4145/8842), MID
/// (RFC 8843). Values as written, each at most [`MAX_WEBRTC_VALUE`]
/// bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebRtcLines {
    /// `a=ice-ufrag`.
    pub ice_ufrag: Option<String>,
    /// `a=ice-pwd`.
    pub ice_pwd: Option<String>,
    /// `a=fingerprint` (the first one: agents send one per certificate).
    pub fingerprint: Option<String>,
    /// `a=setup`.
    pub setup: Option<String>,
    /// `a=mid`.
    pub mid: Option<String>,
    /// `a=bundle-only` on a port-0 line (RFC 8843 §6): carried on the
    /// transport of its BUNDLE group, not disabled.
    pub bundle_only: bool,
    /// The id of the MID header extension (`a=extmap:ID
    /// urn:ietf:params:rtp-hdrext:sdes:mid`), if offered.
    pub mid_extension: Option<u8>,
    /// The line number of the m= line, for errors.
    pub line: usize,
}

/// The RTP header extension carrying MIDs (RFC 8843 §15.1).
pub const MID_EXTENSION_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";

/// Longest WebRTC attribute value read (a sha-512 fingerprint is 200
/// bytes).
pub const MAX_WEBRTC_VALUE: usize = 256;

/// Most `a=crypto` lines on one m= line (real offers carry 1 to 8).
pub const MAX_CRYPTO_LINES: usize = crate::sip::crypto::MAX_CRYPTO_LINES;

impl Media {
    /// Plain RTP: RTP/AVP or RTP/AVPF.
    pub fn is_rtp(&self) -> bool {
        self.proto.eq_ignore_ascii_case("RTP/AVP") || self.proto.eq_ignore_ascii_case("RTP/AVPF")
    }

    /// SRTP with keys in the SDP (SDES): RTP/SAVP or RTP/SAVPF.
    pub fn is_srtp(&self) -> bool {
        self.proto.eq_ignore_ascii_case("RTP/SAVP") || self.proto.eq_ignore_ascii_case("RTP/SAVPF")
    }

    /// DTLS-SRTP (WebRTC): UDP/TLS/RTP/SAVP or UDP/TLS/RTP/SAVPF.
    pub fn is_dtls(&self) -> bool {
        self.proto.eq_ignore_ascii_case("UDP/TLS/RTP/SAVP")
            || self.proto.eq_ignore_ascii_case("UDP/TLS/RTP/SAVPF")
    }

    /// RTP the relay can carry, plain, SDES-SRTP or DTLS-SRTP.
    pub fn is_relayable(&self) -> bool {
        self.is_rtp() || self.is_srtp() || self.is_dtls() || self.is_udptl()
    }

    /// T.38 fax over UDPTL (RFC 3362: `m=image PORT udptl t38`), relayed
    /// as plain datagrams.
    pub fn is_udptl(&self) -> bool {
        self.proto.eq_ignore_ascii_case("udptl")
    }

    /// Port 0: the stream is disabled (offer) or rejected (answer) —
    /// unless it is a bundle-only line (RFC 8843), carried on its group's
    /// transport.
    pub fn is_disabled(&self) -> bool {
        self.port == 0 && !self.webrtc.bundle_only
    }
}

/// Where the relay receives a stream on the leg a body is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayEndpoint {
    /// RTP address (also RTCP with rtcp-mux).
    pub rtp: SocketAddr,
    /// RTCP address.
    pub rtcp: SocketAddr,
}

fn parse_connection(value: &str, line: usize) -> Result<IpAddr, SdpError> {
    let fields: Vec<&str> = value.split_ascii_whitespace().collect();
    let [net, family, address] = fields.as_slice() else {
        return Err(SdpError::at(
            line,
            format!("c={} is not `IN IP4|IP6 ADDRESS`", excerpt(value)),
        ));
    };
    if *net != "IN" {
        return Err(SdpError::at(
            line,
            format!("network type {} is not IN", excerpt(net)),
        ));
    }
    // Multicast forms carry a /ttl or /count suffix; unicast has none.
    let address = address.split('/').next().unwrap_or_default();
    let ip: IpAddr = address.parse().map_err(|_| {
        SdpError::unsupported(
            line,
            format!(
                "connection address {} is not an IP address",
                excerpt(address)
            ),
        )
    })?;
    match (*family, ip) {
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) => Ok(ip),
        (other, _) => Err(SdpError::at(
            line,
            format!("address type {} does not match {address}", excerpt(other)),
        )),
    }
}

fn connection_value(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("IN IP4 {v4}"),
        IpAddr::V6(v6) => format!("IN IP6 {v6}"),
    }
}

fn parse_u32(text: &str, line: usize, what: &str) -> Result<u32, SdpError> {
    text.trim()
        .parse()
        .map_err(|_| SdpError::at(line, format!("{what} {} is not a number", excerpt(text))))
}

impl Sdp {
    /// Parses a body within the default [`SdpLimits`]. Lines end in CRLF or
    /// LF; a trailing empty line is allowed. Only the lines the relay reads
    /// are checked in depth.
    pub fn parse(text: &str) -> Result<Self, SdpError> {
        Self::parse_limited(text, &SdpLimits::default())
    }

    /// Parses a body from a request: over any of `limits` it is refused
    /// (naming the limit) before its lines are kept.
    pub fn parse_limited(text: &str, limits: &SdpLimits) -> Result<Self, SdpError> {
        if text.len() > limits.max_bytes {
            return Err(SdpError::over(
                0,
                SdpLimit::Bytes,
                format!(
                    "the body has {} bytes, more than the limit of {} (sdp-max-bytes)",
                    text.len(),
                    limits.max_bytes
                ),
            ));
        }
        let mut session = Vec::new();
        let mut media: Vec<Vec<Line>> = Vec::new();
        let mut attributes = 0;
        let body = text.strip_suffix('\n').unwrap_or(text);
        if body.trim().is_empty() {
            return Err(SdpError::at(0, "the body is empty"));
        }
        for (index, raw) in body.split('\n').enumerate() {
            let number = index + 1;
            if number > MAX_LINES {
                return Err(SdpError::at(number, format!("more than {MAX_LINES} lines")));
            }
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            let bytes = raw.as_bytes();
            if bytes.len() < 2 || !bytes[0].is_ascii_lowercase() || bytes[1] != b'=' {
                return Err(SdpError::at(
                    number,
                    format!("{} is not a `x=value` line", excerpt(raw)),
                ));
            }
            match bytes[0] {
                b'a' => {
                    attributes += 1;
                    if attributes > limits.max_attributes {
                        return Err(SdpError::over(
                            number,
                            SdpLimit::Attributes,
                            format!(
                                "more than {} a= lines (sdp-max-attributes)",
                                limits.max_attributes
                            ),
                        ));
                    }
                }
                b'm' => {
                    if media.len() == limits.max_media {
                        return Err(SdpError::over(
                            number,
                            SdpLimit::Media,
                            format!("more than {} m= lines (sdp-max-media)", limits.max_media),
                        ));
                    }
                    let formats = raw.split_ascii_whitespace().count().saturating_sub(3);
                    if formats > limits.max_formats {
                        return Err(SdpError::over(
                            number,
                            SdpLimit::Formats,
                            format!(
                                "{formats} formats on one m= line, more than the limit of {} (sdp-max-formats)",
                                limits.max_formats
                            ),
                        ));
                    }
                }
                _ => {}
            }
            let line = Line {
                kind: bytes[0],
                value: raw[2..].to_owned(),
                number,
            };
            if number == 1 && (line.kind != b'v' || line.value != "0") {
                return Err(SdpError::at(number, "the body must start with v=0"));
            }
            if line.kind == b'c' {
                parse_connection(&line.value, number)?;
            }
            match (line.kind, media.last_mut()) {
                (b'm', _) => media.push(vec![line]),
                (b'v' | b'o' | b's' | b't' | b'r' | b'z' | b'u' | b'e' | b'p', Some(_)) => {
                    return Err(SdpError::at(
                        number,
                        format!(
                            "{}= is a session-level line but comes after an m= line",
                            char::from(line.kind)
                        ),
                    ));
                }
                (_, Some(section)) => section.push(line),
                (_, None) => session.push(line),
            }
        }
        let sdp = Self { session, media };
        sdp.origin()?;
        // A body without m= lines is valid (RFC 3264 §5, RFC 4317 §5.1):
        // a session with no media yet; whoever reads it decides.
        // Read every media section once, so a bad line fails here.
        for index in 0..sdp.media.len() {
            sdp.media(index)?;
        }
        Ok(sdp)
    }

    /// The body as text, CRLF line endings.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in self.session.iter().chain(self.media.iter().flatten()) {
            out.push(char::from(line.kind));
            out.push('=');
            out.push_str(&line.value);
            out.push_str("\r\n");
        }
        out
    }

    /// The o= line's fields, checked: index of the line, and the version.
    fn origin(&self) -> Result<(usize, u64), SdpError> {
        let Some(index) = self.session.iter().position(|l| l.kind == b'o') else {
            return Err(SdpError::at(0, "the body has no o= line"));
        };
        let line = &self.session[index];
        let fields: Vec<&str> = line.value.split_ascii_whitespace().collect();
        if fields.len() != 6 {
            return Err(SdpError::at(
                line.number,
                format!("o={} does not have 6 fields", excerpt(&line.value)),
            ));
        }
        let version = fields[2].parse::<u64>().map_err(|_| {
            SdpError::at(
                line.number,
                format!("session version {} is not a number", excerpt(fields[2])),
            )
        })?;
        Ok((index, version))
    }

    /// The o= session version.
    pub fn version(&self) -> u64 {
        self.origin().map_or(0, |(_, version)| version)
    }

    /// Sets the o= session version.
    pub fn set_version(&mut self, version: u64) {
        if let Ok((index, _)) = self.origin() {
            let line = &mut self.session[index];
            let fields: Vec<&str> = line.value.split_ascii_whitespace().collect();
            let mut fields: Vec<String> = fields.into_iter().map(str::to_owned).collect();
            fields[2] = version.to_string();
            line.value = fields.join(" ");
        }
    }

    /// The o= fields other than the version: username, session id, network
    /// type, address type, address.
    pub fn origin_identity(&self) -> [String; 5] {
        let fields: Vec<String> = self
            .origin()
            .ok()
            .map(|(index, _)| {
                self.session[index]
                    .value
                    .split_ascii_whitespace()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let field = |i: usize| fields.get(i).cloned().unwrap_or_default();
        [field(0), field(1), field(3), field(4), field(5)]
    }

    /// Replaces the o= fields other than the version (a party must see one
    /// origin for the whole dialog, RFC 3264 §8, whichever device is behind
    /// the relay).
    pub fn set_origin_identity(&mut self, identity: &[String; 5]) {
        if let Ok((index, version)) = self.origin() {
            let [user, id, net, family, address] = identity;
            self.session[index].value = format!("{user} {id} {version} {net} {family} {address}");
        }
    }

    /// The s= line's value.
    pub fn session_name(&self) -> Option<String> {
        self.session
            .iter()
            .find(|l| l.kind == b's')
            .map(|l| l.value.clone())
    }

    /// Sets the s= line's value (a party sees one session name for the
    /// dialog, whichever device is behind the relay).
    pub fn set_session_name(&mut self, name: &str) {
        if let Some(line) = self.session.iter_mut().find(|l| l.kind == b's') {
            name.clone_into(&mut line.value);
        }
    }

    /// A body with this one's session-level lines and the chosen media
    /// sections.
    pub fn with_sections(&self, picks: &[Pick<'_>]) -> Sdp {
        let media = picks
            .iter()
            .filter_map(|pick| match pick {
                Ok(j) => self.media.get(*j).cloned(),
                Err((other, k)) => other.media.get(*k).cloned(),
            })
            .collect();
        Sdp {
            session: self.session.clone(),
            media,
        }
    }

    /// The body with the o= version left out: equal keys mean the same body
    /// (RFC 3264 §8: an unchanged body keeps its version).
    pub fn identity_key(&self) -> String {
        let mut copy = self.clone();
        copy.set_version(0);
        copy.render()
    }

    /// Replaces the address of every c= line that names one (an
    /// unspecified address, old-style hold, stays), e.g. with the address
    /// the SIP message came from when the body's address is not reachable.
    pub fn set_connection_ip(&mut self, ip: IpAddr) {
        for line in self
            .session
            .iter_mut()
            .chain(self.media.iter_mut().flatten())
        {
            if line.kind == b'c'
                && parse_connection(&line.value, 0).is_ok_and(|old| !old.is_unspecified())
            {
                line.value = connection_value(ip);
            }
        }
    }

    /// The session-level c= address, if any.
    pub fn session_ip(&self) -> Option<IpAddr> {
        self.session_connection().ok().flatten().map(|(ip, _)| ip)
    }

    /// Sets the o= address (and its address type) to `ip`.
    pub fn set_origin_address(&mut self, ip: IpAddr) {
        let mut identity = self.origin_identity();
        identity[3] = if ip.is_ipv6() { "IP6" } else { "IP4" }.to_owned();
        identity[4] = ip.to_string();
        self.set_origin_identity(&identity);
    }

    /// Number of m= lines.
    pub fn media_count(&self) -> usize {
        self.media.len()
    }

    fn session_connection(&self) -> Result<Option<(IpAddr, usize)>, SdpError> {
        self.session
            .iter()
            .find(|l| l.kind == b'c')
            .map(|l| parse_connection(&l.value, l.number).map(|ip| (ip, l.number)))
            .transpose()
    }

    fn session_direction(&self) -> Option<Direction> {
        self.session
            .iter()
            .filter_map(Line::attribute)
            .find_map(|(name, _)| Direction::parse(name))
    }

    /// What the relay reads from m= line `index`.
    pub fn media(&self, index: usize) -> Result<Media, SdpError> {
        let section = self
            .media
            .get(index)
            .ok_or_else(|| SdpError::at(0, format!("no m= line {index}")))?;
        let m = &section[0];
        let fields: Vec<&str> = m.value.split_ascii_whitespace().collect();
        // A rejected line (port 0) may come without formats: browsers
        // answer `m=video 0 RTP/AVP`, and formats mean nothing on it.
        let rejected_bare = fields.len() == 3 && fields[1] == "0";
        if fields.len() < 4 && !rejected_bare {
            return Err(SdpError::at(
                m.number,
                format!("m={} is not `MEDIA PORT PROTO FORMAT…`", excerpt(&m.value)),
            ));
        }
        let (port_text, count) = match fields[1].split_once('/') {
            Some((port, count)) => (port, Some(count)),
            None => (fields[1], None),
        };
        let port: u16 = port_text.parse().map_err(|_| {
            SdpError::at(
                m.number,
                format!("port {} is not a number", excerpt(fields[1])),
            )
        })?;
        let mut media = Media {
            kind: fields[0].to_owned(),
            port,
            proto: fields[2].to_owned(),
            formats: fields[3..].iter().map(|f| (*f).to_owned()).collect(),
            codecs: Vec::new(),
            rtp: None,
            rtcp: None,
            rtcp_mux: false,
            direction: self.session_direction().unwrap_or(Direction::SendRecv),
            ptime: None,
            line: m.number,
            crypto: Vec::new(),
            webrtc: WebRtcLines {
                line: m.number,
                ..WebRtcLines::default()
            },
            keyframe_feedback: (false, false),
        };
        media.webrtc.bundle_only = port == 0
            && media.is_dtls()
            && section[1..].iter().any(|line| {
                line.attribute()
                    .is_some_and(|(name, _)| name == "bundle-only")
            });
        if !media.is_relayable() || media.is_disabled() {
            return Ok(media);
        }
        // Session-level values first; media-level ones replace them.
        let mut fingerprint_level: Option<bool> = None;
        for line in self.session.iter().chain(&section[1..]) {
            let Some((name, Some(value))) = line.attribute() else {
                continue;
            };
            let slot = match name {
                "ice-ufrag" => &mut media.webrtc.ice_ufrag,
                "ice-pwd" => &mut media.webrtc.ice_pwd,
                "fingerprint" => &mut media.webrtc.fingerprint,
                "setup" => &mut media.webrtc.setup,
                "mid" => &mut media.webrtc.mid,
                _ => continue,
            };
            if value.len() > MAX_WEBRTC_VALUE {
                return Err(SdpError::at(
                    line.number,
                    format!("a={name} is longer than {MAX_WEBRTC_VALUE} bytes"),
                ));
            }
            // Agents list one fingerprint per hash function (sha-256,
            // sha-384, …): the first of a level counts, and a media-level
            // one replaces a session-level one.
            let media_level = line.number > m.number;
            if name == "fingerprint" {
                if fingerprint_level == Some(media_level) {
                    continue;
                }
                fingerprint_level = Some(media_level);
            }
            *slot = Some(value.trim().to_owned());
        }
        if count.is_some_and(|c| c != "1") {
            return Err(SdpError::unsupported(
                m.number,
                format!("port ranges ({}) are not supported", excerpt(fields[1])),
            ));
        }
        let mut connection = self.session_connection()?;
        let mut rtpmap: Vec<(u32, v1::Codec)> = Vec::new();
        let mut fmtp: Vec<(u32, String)> = Vec::new();
        let mut rtcp_attribute = None;
        for line in &section[1..] {
            if line.kind == b'c' {
                connection = Some((parse_connection(&line.value, line.number)?, line.number));
                continue;
            }
            let Some((name, value)) = line.attribute() else {
                continue;
            };
            let value = value.unwrap_or_default();
            if let Some(direction) = Direction::parse(name) {
                media.direction = direction;
                continue;
            }
            match name {
                "rtpmap" => rtpmap.push(parse_rtpmap(value, line.number)?),
                "fmtp" => {
                    if let Some((pt, params)) = value.split_once(' ')
                        && let Ok(pt) = pt.parse()
                    {
                        fmtp.push((pt, params.trim().to_owned()));
                    }
                }
                "ptime" => media.ptime = Some(parse_u32(value, line.number, "ptime")?),
                "rtcp-mux" => media.rtcp_mux = true,
                "rtcp-fb" => {
                    // `a=rtcp-fb:<pt or *> nack pli` / `ccm fir` (RFC 4585
                    // §4.2, RFC 5104 §7.1); only two flags are kept.
                    let mut words = value.split_ascii_whitespace().skip(1);
                    match (words.next(), words.next()) {
                        (Some(kind), Some(param))
                            if kind.eq_ignore_ascii_case("nack")
                                && param.eq_ignore_ascii_case("pli") =>
                        {
                            media.keyframe_feedback.0 = true;
                        }
                        (Some(kind), Some(param))
                            if kind.eq_ignore_ascii_case("ccm")
                                && param.eq_ignore_ascii_case("fir") =>
                        {
                            media.keyframe_feedback.1 = true;
                        }
                        _ => {}
                    }
                }
                "extmap" => {
                    if let Some(id) = mid_extension_id(value) {
                        media.webrtc.mid_extension = Some(id);
                    }
                }
                "rtcp" => rtcp_attribute = Some((value, line.number)),
                "crypto" if media.is_srtp() => {
                    if media.crypto.len() == MAX_CRYPTO_LINES {
                        return Err(SdpError::at(
                            line.number,
                            format!("more than {MAX_CRYPTO_LINES} a=crypto lines on one m= line"),
                        ));
                    }
                    media.crypto.push((value.to_owned(), line.number));
                }
                _ => {}
            }
        }
        // UDPTL's format (`t38`) is no payload type: nothing to read.
        let payload_types: &[String] = if media.is_udptl() {
            &[]
        } else {
            &media.formats
        };
        for format in payload_types {
            let pt = format
                .parse::<u32>()
                .ok()
                .filter(|pt| *pt <= 127)
                .ok_or_else(|| {
                    SdpError::at(
                        m.number,
                        format!("format {} is not an RTP payload type", excerpt(format)),
                    )
                })?;
            // A dynamic payload type without a=rtpmap (RFC 8866 §6.6: the
            // mapping may come by other means) is relayed as it is, by its
            // number: no name, no clock rate (see `is_unnamed`).
            let mut codec = match rtpmap.iter().find(|(p, _)| *p == pt) {
                Some((_, codec)) => codec.clone(),
                None => static_codec(pt).unwrap_or_else(|| v1::Codec {
                    payload_type: pt,
                    ..Default::default()
                }),
            };
            if let Some((_, params)) = fmtp.iter().find(|(p, _)| *p == pt) {
                codec.fmtp.clone_from(params);
            }
            media.codecs.push(codec);
        }
        let Some((ip, _)) = connection else {
            return Err(SdpError::at(
                m.number,
                "no c= line for this stream (neither media nor session level)",
            ));
        };
        if ip.is_unspecified() && media.webrtc.ice_ufrag.is_some() {
            // ICE's placeholder (RFC 8839 §4.2.1): the address comes from
            // the checks.
        } else if ip.is_unspecified() {
            // RFC 2543 hold: "do not send to me".
            media.direction = Direction::from_flags(media.direction.sends(), false);
        } else if port != 0 {
            media.rtp = Some(SocketAddr::new(ip, port));
            if let Some((value, number)) = rtcp_attribute {
                let mut parts = value.split_ascii_whitespace();
                let rtcp_port = parts.next().unwrap_or_default();
                let rtcp_port: u16 = rtcp_port.parse().map_err(|_| {
                    SdpError::at(
                        number,
                        format!("a=rtcp port {} is not a number", excerpt(rtcp_port)),
                    )
                })?;
                let rest: Vec<&str> = parts.collect();
                let rtcp_ip = if rest.is_empty() {
                    ip
                } else {
                    parse_connection(&rest.join(" "), number)?
                };
                if rtcp_port != 0 && !rtcp_ip.is_unspecified() {
                    media.rtcp = Some(SocketAddr::new(rtcp_ip, rtcp_port));
                }
            }
        }
        Ok(media)
    }

    /// Points m= line `index` at the relay: its port, its c= address and
    /// its a=rtcp; removes ICE attributes. `session_ip` is what the
    /// session-level c= will say (see [`Sdp::finish_session`]): a stream
    /// that relied on it gets a media-level c= only if its relay address
    /// differs. An unspecified c= address (old-style hold) is kept, since it
    /// tells the receiver not to send.
    pub fn point_at(&mut self, index: usize, relay: RelayEndpoint, session_ip: Option<IpAddr>) {
        let session_hold = self
            .session_connection()
            .ok()
            .flatten()
            .is_some_and(|(ip, _)| ip.is_unspecified());
        // On an ICE line an unspecified c= is ICE's placeholder (RFC 8839
        // §4.2.1: no candidate yet, or BUNDLE-d), not hold.
        let ice_line = self
            .session
            .iter()
            .chain(self.media.get(index).map_or(&[][..], |s| &s[1..]))
            .any(|line| line.is_attribute("ice-ufrag"));
        let session_hold = session_hold && !ice_line;
        let Some(section) = self.media.get_mut(index) else {
            return;
        };
        set_port(&mut section[0], relay.rtp.port());
        // A bundle-only line has a port of its own now.
        section.retain(|line| !line.is_attribute("bundle-only"));
        let mut has_connection = false;
        for line in section.iter_mut().skip(1) {
            if line.kind == b'c' {
                has_connection = true;
                if ice_line || !parse_connection(&line.value, 0).is_ok_and(|ip| ip.is_unspecified())
                {
                    line.value = connection_value(relay.rtp.ip());
                }
            } else if line.is_attribute("rtcp") {
                let with_address = line.value.split_ascii_whitespace().nth(1).is_some();
                line.value = if with_address {
                    format!(
                        "rtcp:{} {}",
                        relay.rtcp.port(),
                        connection_value(relay.rtcp.ip())
                    )
                } else {
                    format!("rtcp:{}", relay.rtcp.port())
                };
            }
        }
        if !has_connection && !session_hold && session_ip != Some(relay.rtp.ip()) {
            // The stream used the session-level c=; give it its own, after
            // m= and i= (RFC 8866 §5 line order).
            let at = 1 + section[1..].iter().take_while(|l| l.kind == b'i').count();
            section.insert(at, Line::new(b'c', connection_value(relay.rtp.ip())));
        }
        section.retain(|line| !is_ice(line) && !is_transport_cc(line));
    }

    /// Renumbers the payload types of m= line `index` by `map` (from, to):
    /// the format list and the `a=rtpmap`, `a=fmtp` and `a=rtcp-fb` lines.
    /// A format not in the map keeps its number unless another format is
    /// being renumbered onto it; then it is left out (with its lines), as
    /// the receiver could not tell the two apart.
    pub fn renumber(&mut self, index: usize, map: &[(u8, u8)]) {
        if map.iter().all(|(from, to)| from == to) {
            return;
        }
        let Some(section) = self.media.get_mut(index) else {
            return;
        };
        let target = |pt: u8| -> Option<u8> {
            match map.iter().find(|(from, _)| *from == pt) {
                Some(&(_, to)) => Some(to),
                None if map.iter().any(|&(_, to)| to == pt) => None,
                None => Some(pt),
            }
        };
        let mut fields: Vec<String> = section[0]
            .value
            .split_ascii_whitespace()
            .map(str::to_owned)
            .collect();
        if fields.len() < 4 {
            return;
        }
        let formats: Vec<String> = fields
            .split_off(3)
            .into_iter()
            .filter_map(|f| match f.parse::<u8>() {
                Ok(pt) => target(pt).map(|to| to.to_string()),
                Err(_) => Some(f),
            })
            .collect();
        fields.extend(formats);
        section[0].value = fields.join(" ");
        section.retain_mut(|line| {
            let Some((name, Some(value))) = line.attribute() else {
                return true;
            };
            if !matches!(name, "rtpmap" | "fmtp" | "rtcp-fb") {
                return true;
            }
            let (pt, rest) = value.split_once(' ').unwrap_or((value, ""));
            let Ok(pt) = pt.parse::<u8>() else {
                return true; // `a=rtcp-fb:* …` applies to every format
            };
            match target(pt) {
                Some(to) => {
                    line.value = format!("{name}:{to} {rest}").trim_end().to_owned();
                    true
                }
                None => false,
            }
        });
    }

    /// Sets the format list of m= line `index` to `formats` (a subset of
    /// its own, in any order) and removes the `a=rtpmap`, `a=fmtp` and
    /// `a=rtcp-fb` lines of the formats left out.
    pub fn set_formats(&mut self, index: usize, formats: &[String]) {
        let Some(section) = self.media.get_mut(index) else {
            return;
        };
        let mut fields: Vec<String> = section[0]
            .value
            .split_ascii_whitespace()
            .take(3)
            .map(str::to_owned)
            .collect();
        fields.extend(formats.iter().cloned());
        section[0].value = fields.join(" ");
        section.retain(|line| {
            let Some((name, Some(value))) = line.attribute() else {
                return true;
            };
            if !matches!(name, "rtpmap" | "fmtp" | "rtcp-fb") {
                return true;
            }
            let format = value.split_once(' ').map_or(value, |(f, _)| f);
            format == "*" || formats.iter().any(|f| f == format)
        });
    }

    /// Whether the session level has the attribute `a=value`.
    pub fn has_session_attribute(&self, value: &str) -> bool {
        self.session
            .iter()
            .any(|line| line.kind == b'a' && line.value == value)
    }

    /// Disables m= line `index` (port 0), for a stream the relay does not
    /// carry; its ICE and crypto attributes go too.
    pub fn disable(&mut self, index: usize) {
        if let Some(section) = self.media.get_mut(index) {
            set_port(&mut section[0], 0);
            // A party's keys and certificate never reach the other party,
            // even on a line that carries nothing (`a=setup` stays: on a
            // TCP line such as BFCP it is that line's own).
            section.retain(|line| {
                !is_ice(line)
                    && !is_key_line(line)
                    && !line.is_attribute("fingerprint")
                    && !line.is_attribute("tls-id")
            });
        }
    }

    /// Sets the transport of m= line `index` (`RTP/AVP`, `RTP/SAVP`, …;
    /// `None` keeps it) and replaces its `a=crypto` lines by `crypto`
    /// (values without `a=`), written where the first one was, or else
    /// after the m= line's own lines that come first (i=, c=, b=, k=).
    pub fn set_transport(&mut self, index: usize, proto: Option<&str>, crypto: &[String]) {
        let Some(section) = self.media.get_mut(index) else {
            return;
        };
        if let Some(proto) = proto {
            let mut fields: Vec<String> = section[0]
                .value
                .split_ascii_whitespace()
                .map(str::to_owned)
                .collect();
            if let Some(field) = fields.get_mut(2) {
                field.clear();
                field.push_str(proto);
            }
            section[0].value = fields.join(" ");
        }
        let removed = |l: &Line| is_key_line(l) || is_dtls_identity(l);
        // Where the first a=crypto line was, among the lines that stay (a
        // DTLS identity line before it goes too).
        let first = section
            .iter()
            .position(|l| l.is_attribute("crypto"))
            .map(|at| section[..at].iter().filter(|l| !removed(l)).count());
        section.retain(|l| !removed(l));
        let at = first.unwrap_or_else(|| {
            1 + section[1..]
                .iter()
                .take_while(|l| matches!(l.kind, b'i' | b'c' | b'b' | b'k'))
                .count()
        });
        for (offset, value) in crypto.iter().enumerate() {
            section.insert(at + offset, Line::new(b'a', value.clone()));
        }
    }

    /// After the media lines are rewritten: points the session-level c= at
    /// `ip` (unless it is an old-style hold address) and removes
    /// session-level ICE attributes.
    pub fn finish_session(&mut self, ip: Option<IpAddr>) {
        for line in &mut self.session {
            if line.kind == b'c'
                && let Some(ip) = ip
                && !parse_connection(&line.value, 0).is_ok_and(|old| old.is_unspecified())
            {
                line.value = connection_value(ip);
            }
        }
        // A party's keys never reach the other party: SDES belongs at media
        // level, but a key in the session part must not pass through either.
        self.session
            .retain(|line| !is_ice(line) && !is_key_line(line) && !is_dtls_identity(line));
    }

    /// Adds a session-level attribute (`a=ice-lite`, `a=group:BUNDLE …`)
    /// before the first m= line, unless it is there already; any
    /// `a=group` lines of the sender go first (a bundle is per transport,
    /// and the relay's transports are its own).
    pub fn set_session_attribute(&mut self, value: &str) {
        if value.starts_with("group:BUNDLE") {
            self.session.retain(|line| !is_bundle_group(line));
        }
        if !self
            .session
            .iter()
            .any(|line| line.kind == b'a' && line.value == value)
        {
            self.session.push(Line::new(b'a', value.to_owned()));
        }
    }

    /// The session lines of a body whose m= lines (by MID) are the
    /// relay's ICE-lite transports, each with the relay address it is on:
    /// `a=ice-lite`, and a BUNDLE group per address that carries several
    /// m= lines — or, when there is only one, for the lone line (what a
    /// max-bundle browser needs). Nothing when `transports` is empty.
    pub fn set_ice_lite_transports(&mut self, transports: &[(String, SocketAddr)]) {
        if transports.is_empty() {
            return;
        }
        self.set_session_attribute("ice-lite");
        self.session.retain(|line| !line.is_attribute("group"));
        let mut addresses: Vec<SocketAddr> = Vec::new();
        for (_, addr) in transports {
            if !addresses.contains(addr) {
                addresses.push(*addr);
            }
        }
        for addr in &addresses {
            let mids: Vec<&str> = transports
                .iter()
                .filter(|(_, a)| a == addr)
                .map(|(mid, _)| mid.as_str())
                .collect();
            if mids.len() > 1 || transports.len() == 1 {
                self.session
                    .push(Line::new(b'a', format!("group:BUNDLE {}", mids.join(" "))));
            }
        }
    }

    /// The MIDs of each `a=group:BUNDLE` line (RFC 8843), at most as many
    /// groups and members as there are m= lines.
    pub fn bundle_groups(&self) -> Vec<Vec<String>> {
        let limit = self.media.len();
        self.session
            .iter()
            .filter_map(Line::attribute)
            .filter_map(|(name, value)| (name == "group").then_some(value?))
            .filter_map(|value| {
                let mut fields = value.split_ascii_whitespace();
                fields
                    .next()
                    .is_some_and(|semantics| semantics.eq_ignore_ascii_case("BUNDLE"))
                    .then(|| fields.take(limit).map(str::to_owned).collect::<Vec<_>>())
            })
            .take(limit)
            .collect()
    }

    /// Removes the `a=group` lines other than BUNDLE (lip sync, …) that
    /// name a MID no m= line of the body has (any more): the relay may
    /// have given a line the receiver's own MID.
    pub fn drop_dangling_groups(&mut self) {
        let mids: Vec<String> = self
            .media
            .iter()
            .flat_map(|section| section.iter())
            .filter_map(|line| match line.attribute() {
                Some(("mid", Some(mid))) => Some(mid.trim().to_owned()),
                _ => None,
            })
            .collect();
        self.session.retain(|line| match line.attribute() {
            Some(("group", Some(value))) if !is_bundle_group(line) => value
                .split_ascii_whitespace()
                .skip(1)
                .all(|mid| mids.iter().any(|m| m == mid)),
            _ => true,
        });
    }

    /// Removes the sender's BUNDLE groups: the receiver gets the relay's
    /// transports, which bundle nothing.
    pub fn remove_groups(&mut self) {
        self.session.retain(|line| !is_bundle_group(line));
    }

    /// Gives m= line `index` the MID `mid` (the receiver's own, on a
    /// WebRTC leg: RFC 8843 answers keep the offer's MIDs).
    pub fn set_mid(&mut self, index: usize, mid: &str) {
        let Some(section) = self.media.get_mut(index) else {
            return;
        };
        let value = format!("mid:{mid}");
        match section.iter_mut().find(|line| line.is_attribute("mid")) {
            // Where the sender wrote it: a body keeps its order.
            Some(line) => line.value = value,
            None => section.push(Line::new(b'a', value)),
        }
    }

    /// Appends an attribute (value without `a=`) to m= line `index`.
    pub fn add_media_attribute(&mut self, index: usize, value: &str) {
        if let Some(section) = self.media.get_mut(index) {
            section.push(Line::new(b'a', value.to_owned()));
        }
    }

    /// Adds `a=rtcp-mux` to m= line `index` if it has none (WebRTC
    /// requires it).
    pub fn require_rtcp_mux(&mut self, index: usize) {
        let Some(section) = self.media.get_mut(index) else {
            return;
        };
        if !section.iter().any(|line| line.is_attribute("rtcp-mux")) {
            section.push(Line::new(b'a', "rtcp-mux".to_owned()));
        }
    }
}

/// The relay's ICE host candidate for `endpoint` (RFC 8839 §5.1): one
/// component, rtcp-mux; the priority of a host candidate of the highest
/// local preference.
pub fn host_candidate(endpoint: &RelayEndpoint) -> String {
    format!(
        "candidate:1 1 UDP 2130706431 {} {} typ host",
        endpoint.rtp.ip(),
        endpoint.rtp.port()
    )
}

/// A MID for m= line `index`: `mid` if it is a token, else the index.
pub fn mid_or_index(mid: Option<String>, index: usize) -> String {
    mid.filter(|mid| is_token(mid))
        .unwrap_or_else(|| index.to_string())
}

/// Whether `text` is an SDP token (RFC 8866 §9), as a MID must be.
pub fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`{|}~".contains(&b))
}

/// `a=group:BUNDLE …`: the sender's transports, which the relay replaces
/// by its own (other groups, such as lip sync, go through).
fn is_bundle_group(line: &Line) -> bool {
    line.attribute().is_some_and(|(name, value)| {
        name == "group" && value.is_some_and(|v| v.starts_with("BUNDLE"))
    })
}

/// `a=crypto` and `k=` lines: one party's keys.
fn is_key_line(line: &Line) -> bool {
    line.kind == b'k' || line.is_attribute("crypto")
}

/// `a=fingerprint`, `a=setup` and `a=tls-id`: one party's DTLS identity
/// on an RTP line, which the relay replaces by its own (on other lines,
/// such as BFCP over TCP, `a=setup` is that party's and stays).
fn is_dtls_identity(line: &Line) -> bool {
    ["fingerprint", "setup", "tls-id"]
        .iter()
        .any(|name| line.is_attribute(name))
}

/// The id of an `a=extmap` value if it maps the MID header extension
/// (RFC 8285: `ID[/direction] URI [attributes]`, ids 1–14 and 16–255).
fn mid_extension_id(value: &str) -> Option<u8> {
    let mut fields = value.split_ascii_whitespace();
    let id = fields.next()?.split('/').next()?;
    let uri = fields.next()?;
    let id: u8 = id.parse().ok().filter(|&id| id != 0 && id != 15)?;
    uri.eq_ignore_ascii_case(MID_EXTENSION_URI).then_some(id)
}

/// Transport-wide congestion control (its `a=rtcp-fb` and header
/// extension) is not negotiated through the relay: its feedback counts the
/// transport sequence numbers of the device that sent them, which start
/// afresh with the next device, and the remote's bandwidth estimate would
/// collapse at every switch. Without it, both ends fall back to REMB or to
/// receiver reports, which the relay maps across a switch.
fn is_transport_cc(line: &Line) -> bool {
    match line.attribute() {
        Some(("rtcp-fb", Some(value))) => value
            .split_ascii_whitespace()
            .nth(1)
            .is_some_and(|fb| fb.eq_ignore_ascii_case("transport-cc")),
        Some(("extmap", Some(value))) => value
            .split_ascii_whitespace()
            .nth(1)
            .is_some_and(|uri| uri.contains("transport-wide-cc")),
        _ => false,
    }
}

fn is_ice(line: &Line) -> bool {
    line.attribute()
        .is_some_and(|(name, _)| ICE_ATTRIBUTES.contains(&name))
}

fn set_port(m_line: &mut Line, port: u16) {
    let mut fields: Vec<String> = m_line
        .value
        .split_ascii_whitespace()
        .map(str::to_owned)
        .collect();
    if let Some(field) = fields.get_mut(1) {
        *field = port.to_string();
    }
    m_line.value = fields.join(" ");
}

fn parse_rtpmap(value: &str, line: usize) -> Result<(u32, v1::Codec), SdpError> {
    let malformed = || {
        SdpError::at(
            line,
            format!(
                "a=rtpmap:{} is not `PT NAME/RATE[/CHANNELS]`",
                excerpt(value)
            ),
        )
    };
    let (pt, encoding) = value.split_once(' ').ok_or_else(malformed)?;
    let pt: u32 = pt.parse().map_err(|_| malformed())?;
    let mut parts = encoding.trim().split('/');
    let name = parts
        .next()
        .filter(|n| !n.is_empty())
        .ok_or_else(malformed)?;
    let rate: u32 = parts
        .next()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .ok_or_else(malformed)?;
    let channels: u32 = match parts.next() {
        Some(c) => c.parse().map_err(|_| malformed())?,
        None => 0,
    };
    if pt > 127 {
        return Err(malformed());
    }
    Ok((
        pt,
        v1::Codec {
            payload_type: pt,
            name: name.to_owned(),
            clock_rate: rate,
            channels: if channels > 1 { channels } else { 0 },
            fmtp: String::new(),
        },
    ))
}

/// One m= line of an answer the relay writes itself (to a new device's
/// offer, on a transfer).
#[derive(Debug, Clone)]
pub struct AnswerMedia {
    /// Where the relay receives; `None` rejects the stream (port 0).
    pub relay: Option<RelayEndpoint>,
    /// The codecs, in the offer's numbering and order.
    pub codecs: Vec<v1::Codec>,
    /// The answer's direction.
    pub direction: Direction,
    /// Packet time to ask for.
    pub ptime: Option<u32>,
    /// Accept the offer's rtcp-mux.
    pub rtcp_mux: bool,
    /// The relay's `a=crypto` value on an SRTP line, or its ICE
    /// credentials, fingerprint and setup on a WebRTC line (values without
    /// `a=`).
    pub security: Vec<String>,
    /// The relay is an ICE-lite agent on this line: a host candidate,
    /// `a=rtcp-mux`, the offer's MID, `a=ice-lite` at session level.
    pub ice: bool,
}

/// Writes an answer to `offer` (RFC 3264 §6: the same m= lines, in order,
/// each with the offer's media type and transport). Session-level lines
/// come from `template` (the remote party's last body) when there is one,
/// so the new device sees the remote's origin and session name.
pub fn write_answer(
    offer: &Sdp,
    template: Option<&Sdp>,
    media: &[AnswerMedia],
    fallback_origin: (u64, IpAddr),
) -> Sdp {
    let first_ip = media
        .iter()
        .find_map(|m| m.relay.map(|r| r.rtp.ip()))
        .unwrap_or(fallback_origin.1);
    let mut session = match template {
        Some(template) => template
            .session
            .iter()
            .filter(|l| {
                !is_ice(l)
                    && !is_key_line(l)
                    && l.attribute()
                        .is_none_or(|(name, _)| Direction::parse(name).is_none())
            })
            .map(|l| Line::new(l.kind, l.value.clone()))
            .collect(),
        None => {
            let family = if first_ip.is_ipv6() { "IP6" } else { "IP4" };
            vec![
                Line::new(b'v', "0"),
                Line::new(
                    b'o',
                    format!("baton {} 1 IN {family} {first_ip}", fallback_origin.0),
                ),
                Line::new(b's', "baton"),
                Line::new(b't', "0 0"),
            ]
        }
    };
    // The session-level c= names the first carried stream's relay address.
    session.retain(|l| l.kind != b'c');
    let at = session
        .iter()
        .position(|l| matches!(l.kind, b'b' | b't'))
        .unwrap_or(session.len());
    session.insert(at, Line::new(b'c', connection_value(first_ip)));

    // The MIDs of the lines on which the relay is an ICE-lite agent.
    let ice_mids = std::cell::RefCell::new(Vec::new());
    let sections = offer
        .media
        .iter()
        .enumerate()
        .map(|(index, offered)| {
            let fields: Vec<&str> = offered[0].value.split_ascii_whitespace().collect();
            let kind = fields.first().copied().unwrap_or("audio");
            let proto = fields.get(2).copied().unwrap_or("RTP/AVP");
            let answer = media
                .get(index)
                .filter(|a| a.relay.is_some() && !a.codecs.is_empty());
            let Some((answer, relay)) = answer.and_then(|a| a.relay.map(|r| (a, r))) else {
                // Rejected: port 0 with the offer's formats (RFC 3264 §6).
                let formats = fields.get(3..).unwrap_or_default().join(" ");
                return vec![Line::new(b'm', format!("{kind} 0 {proto} {formats}"))];
            };
            let formats: Vec<String> = answer
                .codecs
                .iter()
                .map(|c| c.payload_type.to_string())
                .collect();
            let mut lines = vec![Line::new(
                b'm',
                format!("{kind} {} {proto} {}", relay.rtp.port(), formats.join(" ")),
            )];
            if relay.rtp.ip() != first_ip {
                lines.push(Line::new(b'c', connection_value(relay.rtp.ip())));
            }
            for value in &answer.security {
                lines.push(Line::new(b'a', value.clone()));
            }
            if answer.ice {
                lines.push(Line::new(b'a', host_candidate(&relay)));
                lines.push(Line::new(b'a', "end-of-candidates"));
                // RFC 8843 §7.3: the answer keeps the offer's MID.
                let mid = mid_or_index(offer.media(index).ok().and_then(|m| m.webrtc.mid), index);
                lines.push(Line::new(b'a', format!("mid:{mid}")));
                ice_mids.borrow_mut().push((mid, relay.rtp));
            }
            for codec in answer.codecs.iter().filter(|c| !is_unnamed(c)) {
                let channels = if codec.channels > 1 {
                    format!("/{}", codec.channels)
                } else {
                    String::new()
                };
                lines.push(Line::new(
                    b'a',
                    format!(
                        "rtpmap:{} {}/{}{channels}",
                        codec.payload_type, codec.name, codec.clock_rate
                    ),
                ));
                if !codec.fmtp.is_empty() {
                    lines.push(Line::new(
                        b'a',
                        format!("fmtp:{} {}", codec.payload_type, codec.fmtp),
                    ));
                }
            }
            if let Some(ptime) = answer.ptime {
                lines.push(Line::new(b'a', format!("ptime:{ptime}")));
            }
            if answer.rtcp_mux || answer.ice {
                lines.push(Line::new(b'a', "rtcp-mux"));
            } else if relay.rtcp.port() != relay.rtp.port().wrapping_add(1)
                || relay.rtcp.ip() != relay.rtp.ip()
            {
                lines.push(Line::new(
                    b'a',
                    format!(
                        "rtcp:{} {}",
                        relay.rtcp.port(),
                        connection_value(relay.rtcp.ip())
                    ),
                ));
            }
            lines.push(Line::new(b'a', answer.direction.name()));
            lines
        })
        .collect();
    let mut answer = Sdp {
        session,
        media: sections,
    };
    answer.set_ice_lite_transports(&ice_mids.into_inner());
    answer
}

/// Bodies stored as their text and read back with the parser (high
/// availability): `#[serde(with = "as_text")]` on a pair of optional bodies.
pub(crate) mod as_text {
    use super::Sdp;

    /// Writes each body as its text.
    pub fn serialize<S: serde::Serializer>(
        bodies: &[Option<Sdp>; 2],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let texts: [Option<String>; 2] = [
            bodies[0].as_ref().map(Sdp::render),
            bodies[1].as_ref().map(Sdp::render),
        ];
        serde::Serialize::serialize(&texts, serializer)
    }

    /// Parses each body (with the default limits: the relay wrote them).
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<[Option<Sdp>; 2], D::Error> {
        let texts: [Option<String>; 2] = serde::Deserialize::deserialize(deserializer)?;
        let parse = |text: Option<String>| {
            text.map(|t| Sdp::parse(&t).map_err(serde::de::Error::custom))
                .transpose()
        };
        let [user, remote] = texts;
        Ok([parse(user)?, parse(remote)?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An offer shaped like a browser's with audio, video and data: every
    /// codec variant on the video line with its retransmission format,
    /// feedback and parameters, a dozen candidates per m= line, extension
    /// headers, simulcast-style SSRC groups. The largest kind of body a
    /// relay meets in practice.
    fn browser_offer() -> String {
        let mut body = String::from(
            "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
             a=group:BUNDLE 0 1 2\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS stream\r\n",
        );
        let candidates = |body: &mut String| {
            for i in 0..12u32 {
                body.push_str(&format!(
                    "a=candidate:{i} 1 udp {} 192.0.2.{i} {} typ host generation 0 network-id 1\r\n",
                    2_122_260_223 - i,
                    50_000 + i
                ));
            }
            body.push_str(
                "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghijklmn\r\na=ice-options:trickle\r\n\
                 a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
                 a=setup:actpass\r\n",
            );
        };
        let audio: Vec<u8> = vec![111, 63, 9, 0, 8, 13, 110, 126];
        let list = |pts: &[u8]| pts.iter().map(u8::to_string).collect::<Vec<_>>().join(" ");
        body.push_str(&format!(
            "m=audio 9 UDP/TLS/RTP/SAVPF {}\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n",
            list(&audio)
        ));
        candidates(&mut body);
        body.push_str("a=mid:0\r\na=sendrecv\r\na=msid:stream audio\r\na=rtcp-mux\r\n");
        for ext in 1..=5 {
            body.push_str(&format!(
                "a=extmap:{ext} urn:ietf:params:rtp-hdrext:ext{ext}\r\n"
            ));
        }
        for (pt, name) in [
            (111, "opus/48000/2"),
            (63, "red/48000/2"),
            (9, "G722/8000"),
            (0, "PCMU/8000"),
            (8, "PCMA/8000"),
            (13, "CN/8000"),
            (110, "telephone-event/48000"),
            (126, "telephone-event/8000"),
        ] {
            body.push_str(&format!("a=rtpmap:{pt} {name}\r\n"));
        }
        body.push_str("a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtcp-fb:111 transport-cc\r\n");
        body.push_str("a=ssrc:1001 cname:abcdefgh\r\na=ssrc:1001 msid:stream audio\r\n");
        // Video: 20 codec variants, each with its rtx format.
        let video: Vec<u8> = (35..55).chain(96..116).collect();
        body.push_str(&format!(
            "m=video 9 UDP/TLS/RTP/SAVPF {}\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n",
            list(&video)
        ));
        candidates(&mut body);
        body.push_str(
            "a=mid:1\r\na=sendrecv\r\na=msid:stream video\r\na=rtcp-mux\r\na=rtcp-rsize\r\n",
        );
        for ext in 6..=14 {
            body.push_str(&format!(
                "a=extmap:{ext} urn:ietf:params:rtp-hdrext:ext{ext}\r\n"
            ));
        }
        for pair in video.chunks(2) {
            let (media, rtx) = (pair[0], pair[1]);
            body.push_str(&format!("a=rtpmap:{media} H264/90000\r\n"));
            for fb in ["goog-remb", "transport-cc", "ccm fir", "nack", "nack pli"] {
                body.push_str(&format!("a=rtcp-fb:{media} {fb}\r\n"));
            }
            body.push_str(&format!(
                "a=fmtp:{media} level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
                 a=rtpmap:{rtx} rtx/90000\r\na=fmtp:{rtx} apt={media}\r\n"
            ));
        }
        body.push_str(
            "a=ssrc-group:FID 2001 2002\r\na=ssrc:2001 cname:abcdefgh\r\na=ssrc:2002 cname:abcdefgh\r\n",
        );
        body.push_str("m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n");
        candidates(&mut body);
        body.push_str("a=mid:2\r\na=sctp-port:5000\r\na=max-message-size:262144\r\n");
        body
    }

    /// Lip sync groups go through while their MIDs are there; one naming
    /// a MID the body no longer has goes.
    #[test]
    fn groups_other_than_bundle_stay_while_their_mids_do() {
        let text = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
                    a=group:LS 1 2\r\na=group:BUNDLE 1 2\r\n\
                    m=audio 4000 RTP/AVP 0\r\na=mid:1\r\nm=video 4002 RTP/AVP 31\r\na=mid:2\r\n";
        let mut body = Sdp::parse(text).expect("parses");
        body.remove_groups();
        body.drop_dangling_groups();
        let out = body.render();
        assert!(
            out.contains("a=group:LS 1 2\r\n") && !out.contains("BUNDLE"),
            "{out}"
        );
        body.set_mid(1, "video");
        body.drop_dangling_groups();
        assert!(!body.render().contains("a=group:LS"), "{}", body.render());
    }

    /// Found by the sdp_rewrite fuzz target: a DTLS identity line before
    /// the first a=crypto line made the relay's key land past the end.
    #[test]
    fn keys_replace_the_senders_where_a_fingerprint_came_first() {
        let mut body = Sdp::parse(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
             m=audio 4000 RTP/SAVPF 0\r\na=fingerprint:sha-256 AB:CD\r\na=setup:actpass\r\n\
             a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n\
             a=sendrecv\r\n",
        )
        .expect("parses");
        body.set_transport(0, Some("RTP/SAVP"), &["crypto:1 OURS".to_owned()]);
        let out = body.render();
        assert!(
            out.ends_with("m=audio 4000 RTP/SAVP 0\r\na=crypto:1 OURS\r\na=sendrecv\r\n"),
            "{out}"
        );
    }

    #[test]
    fn webrtc_attributes_are_bounded_and_read_with_their_levels() {
        let body = |extra: &str| {
            format!(
                "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\na=fingerprint:sha-256 AA\r\n\
                 m=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 192.0.2.1\r\na=rtcp-mux\r\n{extra}"
            )
        };
        // Session level, then media level replaces it; the first of a
        // level counts.
        let sdp = Sdp::parse(&body(
            "a=fingerprint:sha-256 BB\r\na=fingerprint:sha-512 CC\r\na=ice-ufrag:abcd\r\na=mid:0\r\n",
        ))
        .expect("parse");
        let media = sdp.media(0).expect("media");
        assert_eq!(media.webrtc.fingerprint.as_deref(), Some("sha-256 BB"));
        assert_eq!(media.webrtc.ice_ufrag.as_deref(), Some("abcd"));
        assert_eq!(media.webrtc.mid.as_deref(), Some("0"));
        let session_only = Sdp::parse(&body("")).expect("parse");
        assert_eq!(
            session_only
                .media(0)
                .expect("media")
                .webrtc
                .fingerprint
                .as_deref(),
            Some("sha-256 AA")
        );
        let long = format!("a=ice-pwd:{}\r\n", "x".repeat(MAX_WEBRTC_VALUE + 1));
        let error = Sdp::parse(&body(&long)).expect_err("too long");
        assert!(error.to_string().contains("ice-pwd"), "{error}");
    }

    /// Issue 18: which keyframe requests a line's `a=rtcp-fb` offers.
    #[test]
    fn keyframe_feedback_is_read_from_rtcp_fb() {
        let read = |fb: &str| {
            let body = format!(
                "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
                 m=video 5000 RTP/AVPF 96\r\na=rtpmap:96 VP8/90000\r\n{fb}"
            );
            Sdp::parse(&body)
                .expect("parse")
                .media(0)
                .expect("media")
                .keyframe_feedback
        };
        assert_eq!(read("a=rtcp-fb:96 nack pli\r\n"), (true, false));
        assert_eq!(read("a=rtcp-fb:* ccm fir\r\n"), (false, true));
        assert_eq!(
            read("a=rtcp-fb:96 nack\r\na=rtcp-fb:96 goog-remb\r\n"),
            (false, false)
        );
        assert_eq!(
            read("a=rtcp-fb:96 NACK PLI\r\na=rtcp-fb:96 ccm fir\r\n"),
            (true, true)
        );
    }

    /// Issue 18: transport-wide congestion control is not negotiated
    /// through the relay (its numbers restart with each device); REMB,
    /// NACK and PLI feedback stay.
    #[test]
    fn transport_wide_congestion_control_is_not_passed_on() {
        let before = browser_offer().replacen(
            "a=mid:0\r\n",
            "a=mid:0\r\na=extmap:13 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n",
            1,
        );
        assert!(before.contains("transport-wide-cc"), "the sample offers it");
        let mut sdp = Sdp::parse(&before).expect("parse");
        let relay: SocketAddr = "203.0.113.5:30000".parse().expect("addr");
        for index in 0..sdp.media_count() {
            sdp.point_at(
                index,
                RelayEndpoint {
                    rtp: relay,
                    rtcp: relay,
                },
                None,
            );
        }
        let out = sdp.render();
        assert!(!out.contains("transport-cc"), "{out}");
        assert!(!out.contains("transport-wide-cc"), "{out}");
        assert!(before.contains("transport-cc"), "the sample offers it");
        for kept in ["goog-remb", "nack pli", "ccm fir"] {
            assert_eq!(before.contains(kept), out.contains(kept), "{kept}");
        }
    }

    /// The default limits must never refuse a real call: a browser's offer
    /// passes with room to spare on every limit.
    #[test]
    fn the_default_limits_pass_a_browser_offer_with_room_to_spare() {
        let body = browser_offer();
        let limits = SdpLimits::default();
        let attributes = body.lines().filter(|l| l.starts_with("a=")).count();
        assert!(body.len() * 4 < limits.max_bytes, "{} bytes", body.len());
        assert!(
            attributes * 2 < limits.max_attributes,
            "{attributes} a= lines"
        );
        assert!(40 * 2 < limits.max_formats);
        let sdp = Sdp::parse_limited(&body, &limits).expect("a real offer passes");
        assert_eq!(sdp.media.len(), 3);
        let video = sdp.media(1).expect("the video line reads");
        assert_eq!(video.formats.len(), 40);
    }
}
