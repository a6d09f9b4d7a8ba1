//! The ng commands (`ping`, `offer`, `answer`, `delete`, `query`, `list`)
//! on baton's sessions, with rtpengine's semantics, and the handoff
//! extension: an `offer` from the user's side with the `baton-handoff` flag
//! (or a `replaces` key) naming another device's `gruu` is a verified
//! transfer, and a `delete` of that device's own dialog (`new-call-id`,
//! `new-from-tag`) cancels it. A `query` with the `baton-bind` flag is the
//! registrar's binding of a device (`aor`, `gruu`, `expires`), so that a
//! temporary GRUU verifies at a handoff (the native `RegisterDevice`).
//!
//! Requests for one Call-ID run one at a time, in arrival order: a proxy's
//! parallel processes may send the same offer twice at once (a retransmitted
//! INVITE, a fork), and the second must see the first one's result, never
//! half of it.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};

use baton_proto::v1;
use baton_relay::{Party, SessionId};
use serde_bencode::value::Value;

use super::vocabulary;
use super::wire::{Dict, dict, error, get_list, get_str, text};
use crate::service::Service;
use crate::sessions::BranchEnd;
use crate::sessions::media_control::{Control, ControlTarget, RecordAction};
use crate::sessions::transfer::TransferContext;
use crate::sessions::{DialogView, by_id};
use crate::sip::sdp::Sdp;
use crate::status::{Status, excerpt};

/// How many calls `list` returns without a `limit`.
const DEFAULT_LIST_LIMIT: usize = 32;

/// The options of one request.
#[derive(Debug, Default)]
struct Options {
    flags: HashSet<String>,
    /// `replace` values (and `replace-…` flags), canonical.
    replace: HashSet<String>,
    /// `media-address`: where the sender's media is, whatever the body
    /// and the SIP source say.
    media_address: Option<IpAddr>,
    /// `codec` manipulations on the body that goes out.
    codecs: crate::sip::codec_rules::CodecRules,
    /// `loop-protect`: the attribute (`baton:<instance>`) that marks a
    /// body this relay wrote.
    loop_mark: Option<String>,
    /// `direction` (or `from-interface`, `to-interface`): the interface of
    /// the message's sender's legs and of its recipient's; empty: not given.
    interfaces: [String; 2],
    received_from: Option<IpAddr>,
    other_family: v1::AddressFamily,
    /// `transport-protocol`: the transport toward the message's recipient.
    transport: Option<String>,
    /// rtpengine's SDES options (the `SDES` list and `SDES-…` flags).
    sdes: Option<v1::SdesOptions>,
    /// `SDES-off`: offer no SDES keys.
    sdes_off: bool,
    /// `ICE` and `DTLS` toward the message's recipient.
    webrtc: Option<v1::WebRtcOptions>,
}

/// Most SDES options read from one request.
const MAX_SDES_OPTIONS: usize = 32;

/// Reads `ICE` and `DTLS` (a string, or `ICE-…`/`DTLS-…` flags) toward the
/// recipient. ICE: `remove` (none, unless the transport is WebRTC, which
/// needs it), `force` (ICE-lite toward it), `default`/`optional` (as the
/// transport needs). DTLS: `off`/`no`/`disable` (refused toward a WebRTC
/// transport, which has no other key exchange), `passive`/`active` (the
/// relay's role in its offer). Anything else is refused by name: what
/// the relay cannot honour is never silently ignored.
fn webrtc_options(
    request: &Dict,
    flags: &HashSet<String>,
    transport: Option<crate::sip::crypto::Transport>,
) -> Result<Option<v1::WebRtcOptions>, String> {
    let pick = |key: &str| -> Vec<String> {
        let prefix = format!("{}-", key.to_ascii_lowercase());
        let mut values: Vec<String> = get_str(request, key)
            .map(str::to_owned)
            .into_iter()
            .collect();
        values.extend(
            flags
                .iter()
                .filter_map(|f| f.strip_prefix(&prefix).map(str::to_owned)),
        );
        values.into_iter().map(|v| v.to_ascii_lowercase()).collect()
    };
    let dtls_transport = transport.is_some_and(crate::sip::crypto::Transport::is_dtls);
    // rtcp-mux: a WebRTC leg always multiplexes; toward a SIP phone the
    // relay offers what the sender offered and falls back to separate RTCP
    // ports when the answer has no a=rtcp-mux (RFC 5761), which is what
    // `demux` asks for. Nothing else is honoured.
    let mut muxes = get_list(request, "rtcp-mux");
    muxes.extend(
        flags
            .iter()
            .filter_map(|f| f.strip_prefix("rtcp-mux-").map(str::to_owned)),
    );
    for mux in muxes {
        let mux = mux.to_ascii_lowercase();
        if !matches!(mux.as_str(), "offer" | "require" | "demux" | "accept") {
            return Err(format!(
                "rtcp-mux-{} is not supported (offer, require, demux, accept)",
                excerpt(&mux)
            ));
        }
    }
    let mut options = v1::WebRtcOptions::default();
    for ice in pick("ice") {
        match ice.as_str() {
            "remove" if dtls_transport => {
                return Err(
                    "ICE=remove toward a UDP/TLS/RTP/SAVP(F) recipient: baton's WebRTC legs need ICE (give ICE=force or leave ICE out)"
                        .to_owned(),
                );
            }
            "remove" | "default" | "optional" => {}
            "force" => options.force_ice = true,
            other => {
                return Err(format!(
                    "ICE={} is not supported (remove, force, default; baton is an ICE-lite agent with host candidates only, no TURN)",
                    excerpt(other)
                ));
            }
        }
    }
    for dtls in pick("dtls") {
        match dtls.as_str() {
            "off" | "no" | "disable" if dtls_transport => {
                return Err(
                    "DTLS=off toward a UDP/TLS/RTP/SAVP(F) recipient leaves no key exchange"
                        .to_owned(),
                );
            }
            "off" | "no" | "disable" => {}
            "passive" | "active" => options.dtls_setup = dtls.clone(),
            other => {
                return Err(format!(
                    "DTLS={} is not supported (off, passive, active)",
                    excerpt(other)
                ));
            }
        }
    }
    Ok((options != v1::WebRtcOptions::default()).then_some(options))
}

/// Reads rtpengine's SDES options: `no-SUITE`, `only-SUITE`, `pad`,
/// `lifetime`, `off`; options that describe what baton does anyway
/// (`static`, `prefer`, `encrypted_srtp`, …) are accepted; options baton
/// cannot honour are refused, never ignored. Suites baton does not
/// implement (F8, NULL, AES-192) in `no-` are ignored: it never offers them.
fn sdes_options(items: &[String]) -> Result<(Option<v1::SdesOptions>, bool), String> {
    if items.len() > MAX_SDES_OPTIONS {
        return Err(format!("more than {MAX_SDES_OPTIONS} SDES options"));
    }
    let mut options = v1::SdesOptions::default();
    let mut off = false;
    let mut only_given = false;
    let suite = |name: &str| {
        baton_relay::core::srtp::Suite::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
            .map(|s| s.name().to_owned())
    };
    for item in items {
        let lower = item.to_ascii_lowercase();
        if let Some(name) = lower.strip_prefix("no-") {
            if let Some(name) = suite(name) {
                options.exclude.push(name);
            }
        } else if let Some(name) = lower.strip_prefix("only-") {
            only_given = true;
            if let Some(name) = suite(name) {
                options.only.push(name);
            }
        } else {
            match lower.as_str() {
                "off" | "no" | "disable" | "disabled" => off = true,
                "pad" => options.pad = true,
                "lifetime" => options.lifetime = true,
                // What baton does anyway: keys kept on re-offers, SDES
                // only, always encrypted and authenticated.
                "static" | "prefer" | "priority" | "encrypted_srtp" | "encrypted_srtcp"
                | "authenticated_srtp" => {}
                "unencrypted_srtp" | "unencrypted_srtcp" | "unauthenticated_srtp" => {
                    return Err(format!(
                        "SDES-{} is not supported: baton always encrypts and authenticates SRTP and SRTCP",
                        excerpt(item)
                    ));
                }
                _ => {
                    return Err(format!(
                        "SDES option {} is not supported (supported: off, no-SUITE, only-SUITE, pad, lifetime, static, prefer)",
                        excerpt(item)
                    ));
                }
            }
        }
    }
    if only_given && options.only.is_empty() {
        return Err(
            "SDES-only names no suite baton implements (AES_CM_128_HMAC_SHA1_80/32, AES_256_CM_HMAC_SHA1_80/32, AEAD_AES_128_GCM, AEAD_AES_256_GCM)"
                .to_owned(),
        );
    }
    let given = options != v1::SdesOptions::default();
    Ok((given.then_some(options), off))
}

/// The `codec` dictionary and `codec-…` flags: rtpengine's manipulations
/// that need no transcoding; the others are refused by name.
fn codec_rules(request: &Dict) -> Result<crate::sip::codec_rules::CodecRules, String> {
    let mut lists: HashMap<&str, Vec<String>> = HashMap::new();
    match request.get(b"codec".as_slice()) {
        Some(Value::Dict(ops)) => {
            for (op, names) in ops {
                let op = String::from_utf8_lossy(op);
                let normal = vocabulary::normalize(&op);
                let (name, treatment) = vocabulary::CODEC_KEYS
                    .iter()
                    .find(|(name, _)| *name == normal)
                    .copied()
                    .ok_or_else(|| {
                        format!(
                            "codec {} is not implemented by baton (strip, mask, offer, except)",
                            excerpt(&op)
                        )
                    })?;
                if let vocabulary::Treatment::Refused(reason) = treatment {
                    return Err(format!(
                        "codec {} is not implemented by baton: {reason}",
                        excerpt(&op)
                    ));
                }
                let one = Dict::from([(b"names".to_vec(), names.clone())]);
                lists
                    .entry(name)
                    .or_default()
                    .extend(get_list(&one, "names"));
            }
        }
        Some(_) => return Err("codec must be a dictionary (strip, mask, offer, except)".to_owned()),
        None => {}
    }
    // Canonical flags: the prefix in lower case, the codec as written.
    for flag in get_list(request, "flags") {
        for op in ["strip", "mask", "offer", "except"] {
            if let Some(name) = flag.strip_prefix(&format!("codec-{op}-")) {
                lists.entry(op).or_default().push(name.to_owned());
            }
        }
    }
    let list = |op: &str| lists.get(op).cloned().unwrap_or_default();
    crate::sip::codec_rules::CodecRules::read(
        &list("strip"),
        &list("mask"),
        &list("offer"),
        &list("except"),
    )
}

impl Options {
    /// Reads a request already in canonical spelling (see
    /// [`vocabulary::canonical`]).
    fn read(request: &Dict) -> Result<Self, String> {
        let flags: HashSet<String> = get_list(request, "flags")
            .into_iter()
            .map(|f| f.to_ascii_lowercase())
            .collect();
        let webrtc_flag = flags.contains("webrtc").then_some("UDP/TLS/RTP/SAVPF");
        let transport = match get_str(request, "transport-protocol").or(webrtc_flag) {
            // The answer keeps what was offered.
            None | Some("accept") => None,
            Some(protocol) => match crate::sip::crypto::Transport::parse(protocol) {
                Some(transport) => Some(transport.name().to_owned()),
                None => {
                    return Err(format!(
                        "transport-protocol {} is not supported: baton relays RTP/AVP, RTP/AVPF, RTP/SAVP, RTP/SAVPF (SDES), UDP/TLS/RTP/SAVP and UDP/TLS/RTP/SAVPF (DTLS-SRTP)",
                        excerpt(protocol)
                    ));
                }
            },
        };
        let mut sdes_items = get_list(request, "sdes");
        if flags.contains("pad-crypto") {
            sdes_items.push("pad".to_owned());
        }
        sdes_items.extend(get_list(request, "flags").into_iter().filter_map(|f| {
            f.get(5..)
                .filter(|_| f.len() > 5 && f[..5].eq_ignore_ascii_case("sdes-"))
                .map(str::to_owned)
        }));
        let (mut sdes, sdes_off) = sdes_options(&sdes_items)?;
        let wanted = transport
            .as_deref()
            .and_then(crate::sip::crypto::Transport::parse);
        if sdes_off && wanted.is_some_and(crate::sip::crypto::Transport::is_srtp) {
            return Err(
                "SDES-off with an RTP/SAVP(F) transport-protocol leaves no key exchange; use UDP/TLS/RTP/SAVPF for DTLS-SRTP"
                    .to_owned(),
            );
        }
        let webrtc = webrtc_options(request, &flags, wanted)?;
        // OSRTP, as a string, a list or `OSRTP-…` flags: `accept` lets a
        // plain answer to an SRTP offer make that leg plain; opportunistic
        // offers are not supported.
        let mut osrtp = get_list(request, "osrtp");
        osrtp.extend(
            flags
                .iter()
                .filter_map(|f| f.strip_prefix("osrtp-").map(str::to_owned)),
        );
        for value in &osrtp {
            let value = value.to_ascii_lowercase();
            match value.as_str() {
                "accept" | "accept-rfc" => {
                    sdes.get_or_insert_with(v1::SdesOptions::default)
                        .accept_plain = true;
                }
                _ => {
                    return Err(format!(
                        "OSRTP {} is not supported (opportunistic SRTP offers)",
                        excerpt(&value)
                    ));
                }
            }
        }
        // ["IP4", "203.0.113.7"]: where the SIP message came from.
        let received_from = match get_list(request, "received-from").as_slice() {
            [_, address] => address.parse().ok(),
            _ => None,
        };
        let other_family = match get_str(request, "address-family") {
            Some("IP6") => v1::AddressFamily::Ipv6,
            Some("IP4") => v1::AddressFamily::Ipv4,
            Some(other) => {
                return Err(format!(
                    "address family {} is neither IP4 nor IP6",
                    excerpt(other)
                ));
            }
            None => v1::AddressFamily::Unspecified,
        };
        let media_address = match get_str(request, "media-address") {
            Some(address) => Some(address.parse::<IpAddr>().map_err(|_| {
                format!(
                    "media address {} is not an IPv4 or IPv6 address",
                    excerpt(address)
                )
            })?),
            None => None,
        };
        let mut replace = HashSet::new();
        let replace_flags = flags
            .iter()
            .filter_map(|f| f.strip_prefix("replace-").map(str::to_owned));
        for value in get_list(request, "replace")
            .into_iter()
            .chain(replace_flags)
        {
            let normal = vocabulary::normalize(&value);
            match vocabulary::REPLACE.iter().find(|(name, _)| *name == normal) {
                Some((_, vocabulary::Treatment::Refused(reason))) => {
                    return Err(format!(
                        "replace {} is not implemented by baton: {reason}",
                        excerpt(&value)
                    ));
                }
                Some((name, _)) => {
                    replace.insert((*name).to_owned());
                }
                None => {
                    return Err(format!(
                        "replace {} is not implemented by baton (origin, origin-full, session-connection, username, sdp-version, session-name)",
                        excerpt(&value)
                    ));
                }
            }
        }
        let mut interfaces = [String::new(), String::new()];
        match get_list(request, "direction").as_slice() {
            [] => {}
            [from] => interfaces[0].clone_from(from),
            [from, to] => interfaces = [from.clone(), to.clone()],
            other => {
                return Err(format!(
                    "direction names two interfaces (the sender's side, the recipient's), not {}",
                    other.len()
                ));
            }
        }
        for (slot, key) in interfaces
            .iter_mut()
            .zip(["from-interface", "to-interface"])
        {
            if let Some(name) = get_str(request, key) {
                name.clone_into(slot);
            }
        }
        Ok(Self {
            codecs: codec_rules(request)?,
            loop_mark: None,
            interfaces,
            flags,
            replace,
            media_address,
            received_from,
            other_family,
            transport,
            sdes,
            sdes_off,
            webrtc,
        })
    }

    /// `SDES-off` toward a recipient that would get SRTP (the body's own
    /// transport mirrored): refused, as no key exchange is left.
    fn check_sdes_off(&self, sdp: &str) -> Result<(), String> {
        if !self.sdes_off || self.transport.is_some() {
            return Ok(());
        }
        let srtp = Sdp::parse(sdp).is_ok_and(|body| {
            (0..body.media_count()).any(|i| body.media(i).is_ok_and(|m| m.is_srtp()))
        });
        if srtp {
            return Err(
                "SDES-off toward an RTP/SAVP(F) recipient leaves no key exchange; give transport-protocol RTP/AVP to bridge to plain RTP, or UDP/TLS/RTP/SAVPF for DTLS-SRTP"
                    .to_owned(),
            );
        }
        Ok(())
    }

    fn has(&self, flag: &str) -> bool {
        self.flags.contains(flag)
    }

    /// The body as the relay should read it: with `SIP-source-address`, the
    /// media is where the SIP message came from, not where the SDP says.
    /// A body rewritten here is held to the SDP limits first; the session
    /// checks every other body when it reads it.
    fn incoming(&self, sdp: &str, sessions: &crate::sessions::Sessions) -> Result<String, String> {
        let limits = sessions.sdp_limits();
        let from_sip = self
            .received_from
            .filter(|_| self.has("sip-source-address") && !self.has("trust-address"));
        match self.media_address.or(from_sip) {
            Some(ip) => {
                let mut body = Sdp::parse_limited(sdp, &limits).map_err(|e| {
                    if let Some(limit) = e.limit {
                        sessions.telemetry().refused(limit.reason());
                    }
                    e.to_string()
                })?;
                body.set_connection_ip(ip);
                Ok(body.render())
            }
            None => Ok(sdp.to_owned()),
        }
    }

    /// `loop-protect`: the body carries this relay's mark, so it has
    /// been through this relay already and goes back untouched.
    fn looped(&self, sdp: &str) -> bool {
        self.loop_mark
            .as_deref()
            .is_some_and(|mark| Sdp::parse(sdp).is_ok_and(|body| body.has_session_attribute(mark)))
    }

    /// The body as it goes out: the `codec` manipulations; with
    /// `replace: origin`, the o= line names the relay too; with
    /// `loop-protect`, this relay's mark.
    fn outgoing(&self, sdp: String) -> String {
        let origin = self.replace.contains("origin") || self.replace.contains("origin-full");
        if !origin && self.codecs.is_empty() && self.loop_mark.is_none() {
            return sdp;
        }
        let Ok(mut body) = Sdp::parse(&sdp) else {
            return sdp;
        };
        self.codecs.apply(&mut body);
        if origin
            && let Some(ip) = body.session_ip().or_else(|| {
                body.media(0)
                    .ok()
                    .and_then(|m| m.rtp.map(|a: SocketAddr| a.ip()))
            })
        {
            body.set_origin_address(ip);
        }
        if let Some(mark) = &self.loop_mark {
            body.set_session_attribute(mark);
        }
        body.render()
    }
}

/// A body with no m= line, or only rejected ones (port 0): nothing for
/// the relay to carry.
fn carries_no_media(sdp: &str) -> bool {
    Sdp::parse(sdp).is_ok_and(|body| {
        (0..body.media_count()).all(|i| body.media(i).is_ok_and(|m| m.is_disabled()))
    })
}

/// rtpengine's media commands: which control each one sets, and to what.
fn media_command(command: &str) -> Option<(Control, bool)> {
    Some(match command {
        "block media" => (Control::BlockMedia, true),
        "unblock media" => (Control::BlockMedia, false),
        "silence media" => (Control::SilenceMedia, true),
        "unsilence media" => (Control::SilenceMedia, false),
        "block DTMF" => (Control::BlockDtmf, true),
        "unblock DTMF" => (Control::BlockDtmf, false),
        _ => return None,
    })
}

fn status_reply(status: &Status) -> Value {
    error(status.message.clone())
}

/// A new call the relay cannot take, in the words Kamailio's rtpengine
/// module fails over on (it then offers the call to the next relay of its
/// set): `load limit` while draining, to a proxy that says it `supports`
/// it (Kamailio since 2019), else rtpengine's session-limit reason, which
/// older proxies fail over on too; rtpengine's own reasons for a full
/// relay. Every other refusal is an error like any other.
fn new_call_refused(status: &Status, request: &Dict) -> Value {
    use crate::status::Capacity;
    match status.capacity {
        Some(Capacity::Draining)
            if get_list(request, "supports")
                .iter()
                .any(|s| s.eq_ignore_ascii_case("load limit")) =>
        {
            dict([
                ("result", text("load limit")),
                ("message", text("draining: new calls go to another relay")),
            ])
        }
        Some(Capacity::Draining) => error(SESSION_LIMIT_REASON),
        Some(Capacity::Sessions) => error(SESSION_LIMIT_REASON),
        Some(Capacity::Ports) => error(OUT_OF_PORTS_REASON),
        None => status_reply(status),
    }
}

/// rtpengine's reason for a relay at its session limit; a proxy compares it
/// whole.
pub const SESSION_LIMIT_REASON: &str = "Parallel session limit reached";
/// rtpengine's reason for a call or tag it does not know.
const NOT_FOUND_REASON: &str = "Call-ID not found or tags didn't match";
/// rtpengine's reason for a relay out of ports; a proxy compares it whole.
pub const OUT_OF_PORTS_REASON: &str = "Ran out of ports";

fn required<'a>(request: &'a Dict, key: &str) -> Result<&'a str, Value> {
    get_str(request, key)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| error(format!("No {key} in message")))
}

fn ok_with_sdp(sdp: String) -> Value {
    dict([("result", text("ok")), ("sdp", text(sdp))])
}

/// Requests for one Call-ID waiting at once; more are refused at once, so
/// one call cannot tie up the listener's request slots.
const MAX_WAITING_PER_CALL: usize = 8;

/// One lock per Call-ID with requests in flight.
#[derive(Debug, Default)]
struct CallLocks {
    calls: std::sync::Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl CallLocks {
    /// Waits until no other request for `call_id` runs; `None` when too
    /// many wait already.
    async fn lock(&self, call_id: &str) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        let lock = {
            let mut calls = self
                .calls
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Forget the calls nobody holds any more (bounded by the
            // requests in flight).
            calls.retain(|_, lock| lock.strong_count() > 0);
            match calls.get(call_id).and_then(Weak::upgrade) {
                // Every holder and waiter keeps one reference.
                Some(lock) if Arc::strong_count(&lock) > MAX_WAITING_PER_CALL => return None,
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    calls.insert(call_id.to_owned(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        Some(lock.lock_owned().await)
    }
}

/// Runs ng requests against the relay's sessions.
#[derive(Debug, Clone)]
pub struct NgService {
    service: Arc<Service>,
    calls: Arc<CallLocks>,
    /// The attribute `loop-protect` writes: `baton:` and this process's
    /// random instance name.
    loop_mark: Arc<str>,
    /// The relay's figures for `statistics`, at most a second old: each
    /// fresh set asks every worker, which a flood of requests must not do.
    stats: Arc<std::sync::Mutex<Option<(std::time::Instant, v1::GetStatsResponse)>>>,
}

impl NgService {
    /// The ng front end of `service`.
    pub fn new(service: Arc<Service>) -> Self {
        Self {
            service,
            calls: Arc::default(),
            loop_mark: format!("baton:{:016x}", rand::random::<u64>()).into(),
            stats: Arc::default(),
        }
    }

    /// A request's options, with this relay's loop mark when asked for.
    fn options(&self, request: &Dict) -> Result<Options, Value> {
        let mut options = Options::read(request).map_err(error)?;
        let sessions = self.service.sessions();
        for name in &mut options.interfaces {
            if name.is_empty() {
                continue;
            }
            // rtpengine's legacy words, on a relay without interfaces of
            // those names: no choice (its address family is the
            // `address-family` key's business).
            if matches!(name.as_str(), "internal" | "external") && sessions.interface(name).is_err()
            {
                name.clear();
                continue;
            }
            sessions.interface(name).map_err(|s| status_reply(&s))?;
        }
        if options.has("loop-protect") {
            options.loop_mark = Some(self.loop_mark.to_string());
        }
        Ok(options)
    }

    /// The control plane's counters.
    pub fn telemetry(&self) -> &crate::telemetry::Telemetry {
        self.service.sessions().telemetry()
    }

    /// Answers one request.
    pub async fn handle(&self, request: &Dict) -> Value {
        let request = match vocabulary::canonical(request) {
            Ok(request) => request,
            Err(reason) => {
                self.telemetry().refused("ng_not_implemented");
                self.count(get_str(request, "command").unwrap_or(""), false);
                return error(reason);
            }
        };
        let request = &request;
        let command = get_str(request, "command").unwrap_or("").to_owned();
        let _one_at_a_time = match get_str(request, "call-id") {
            Some(call_id) if !call_id.is_empty() => match self.calls.lock(call_id).await {
                Some(guard) => Some(guard),
                None => {
                    self.telemetry().refused("ng_call_busy");
                    return error(format!(
                        "too many requests in flight for call {}",
                        excerpt(call_id)
                    ));
                }
            },
            Some(_) | None => None,
        };
        // baton's extensions ride on `query`, the one command Kamailio's
        // module sends with any flags and no SDP.
        let flagged = |name: &str| get_list(request, "flags").iter().any(|f| f == name);
        let reply = match get_str(request, "command") {
            Some("ping") => self.ping(),
            Some("offer") => self.offer(request).await,
            Some("answer") => self.answer(request).await,
            Some("delete") => self.delete(request).await,
            Some("query") if flagged("baton-bind") => self.bind(request),
            Some("query") if flagged("baton-commit") => self.commit(request).await,
            Some("query") => self.query(request).await,
            Some("list") => Ok(self.list(request)),
            Some("statistics") => Ok(self.statistics().await),
            Some("start recording") => self.recording(request, RecordAction::Start).await,
            Some("pause recording") => self.recording(request, RecordAction::Pause).await,
            Some("stop recording")
                if flagged("pause")
                    || get_str(request, "pause").is_some_and(|p| p.eq_ignore_ascii_case("yes")) =>
            {
                self.recording(request, RecordAction::Pause).await
            }
            Some("stop recording") => self.recording(request, RecordAction::Stop).await,
            Some(command) if media_command(command).is_some() => {
                let (control, on) = media_command(command).unwrap_or((Control::BlockMedia, true));
                self.control(request, control, on).await
            }
            Some(other) => Err(error(format!("Unrecognized command {}", excerpt(other)))),
            None => Err(error("No command in message")),
        };
        let reply = match reply {
            Ok(reply) if matches!(command.as_str(), "offer" | "answer") => {
                Ok(self.record_if_asked(request, reply).await)
            }
            other => other,
        };
        self.count(&command, reply.is_ok());
        reply.unwrap_or_else(|e| e)
    }

    /// `record-call` (flag, or the key `yes`/`on`) on an offer or answer:
    /// the call is recorded from now on. A recording that cannot start
    /// leaves the reply as it is, with a warning saying why.
    async fn record_if_asked(&self, request: &Dict, reply: Value) -> Value {
        let asked = get_list(request, "flags")
            .iter()
            .any(|f| f == "record-call")
            || get_str(request, "record-call")
                .is_some_and(|v| v.eq_ignore_ascii_case("yes") || v.eq_ignore_ascii_case("on"));
        let (true, Some(call_id)) = (asked, get_str(request, "call-id")) else {
            return reply;
        };
        let sessions = self.service.sessions();
        let mut failed = None;
        for id in sessions.sessions_of_call(call_id, None) {
            if let Err(status) = sessions.record(id, RecordAction::Start).await {
                failed = Some(status.message);
            }
        }
        match (failed, reply) {
            (Some(why), Value::Dict(mut dict)) => {
                dict.insert(
                    b"warning".to_vec(),
                    text(format!("the call is not recorded: {why}")),
                );
                Value::Dict(dict)
            }
            (_, reply) => reply,
        }
    }

    /// `start recording`, `stop recording` (`pause` for a pause) and
    /// `pause recording`, for the whole call.
    async fn recording(&self, request: &Dict, action: RecordAction) -> Result<Value, Value> {
        let call_id = required(request, "call-id")?;
        let sessions = self.service.sessions();
        let ids = sessions.sessions_of_call(call_id, None);
        if ids.is_empty() {
            return Err(error(NOT_FOUND_REASON));
        }
        for id in ids {
            match sessions.record(id, action).await {
                Ok(_) => {}
                Err(status) if status.code == v1::Code::NotFound => {}
                Err(status) => return Err(status_reply(&status)),
            }
        }
        Ok(dict([("result", text("ok"))]))
    }

    /// Counts one request by command and outcome.
    fn count(&self, command: &str, ok: bool) {
        let command = if crate::telemetry::NG_COMMANDS.contains(&command) {
            command
        } else {
            "other"
        };
        self.telemetry()
            .ng_requests
            .get_or_create(&crate::telemetry::RequestLabels {
                command: command.to_owned(),
                code: if ok { "ok" } else { "error" }.to_owned(),
            })
            .inc();
    }

    /// `pong`, unless a drain asked to refuse pings: a proxy that pings its
    /// relays then marks this one disabled.
    fn ping(&self) -> Result<Value, Value> {
        match self.service.sessions().drain().plan() {
            Some(plan) if plan.refuse_ng_ping => Err(error(
                "draining: this relay takes no new calls and exits when its calls end",
            )),
            Some(_) | None => Ok(dict([("result", text("pong"))])),
        }
    }

    async fn offer(&self, request: &Dict) -> Result<Value, Value> {
        let call_id = required(request, "call-id")?;
        let from_tag = required(request, "from-tag")?;
        let to_tag = get_str(request, "to-tag").unwrap_or_default();
        let sdp = required(request, "sdp")?;
        let options = self.options(request)?;
        // The body as it came, if it carries this relay's loop mark.
        let looped = options.looped(sdp).then(|| sdp.to_owned());
        options.check_sdes_off(sdp).map_err(error)?;
        let sessions = self.service.sessions();
        let sdp = options.incoming(sdp, sessions).map_err(error)?;
        // (the session, whether the tags matched it exactly)
        let existing = match sessions.find_dialog(call_id, from_tag, to_tag) {
            Ok(view) => Some((view, true)),
            Err(status) if status.code == v1::Code::NotFound && to_tag.is_empty() => None,
            Err(status) if status.code == v1::Code::NotFound => {
                // A re-INVITE whose to-tag the relay has not seen yet.
                sessions
                    .find_dialog(call_id, from_tag, "")
                    .ok()
                    .map(|view| (view, false))
            }
            Err(status) => return Err(status_reply(&status)),
        };
        // A handoff is asked for, never guessed: a proxy that passes the
        // Contact as `gruu` on every offer must not turn a re-INVITE from a
        // device without a GRUU into a transfer. `baton-handoff` asks for
        // one on a known dialog, whatever else comes; a `replaces` key
        // (which some configurations pass on every INVITE) asks on a known
        // dialog unless it comes from the device that has the call.
        let flagged = options.has("baton-handoff");
        let replaces = get_str(request, "replaces").is_some_and(|r| !r.is_empty());
        let no_call = || {
            error(format!(
                "handoff refused: no call {} with from-tag {} and to-tag {}",
                excerpt(call_id),
                excerpt(from_tag),
                excerpt(to_tag)
            ))
        };
        let (existing, exact) = match existing {
            Some((_, false)) if flagged || replaces => return Err(no_call()),
            None if flagged => return Err(no_call()),
            Some((view, exact)) => (Some(view), exact),
            None => (None, false),
        };
        let Some(view) = existing else {
            if let Some(untouched) = looped.filter(|_| !replaces) {
                // A new call's offer that has been through this relay (a
                // signalling loop): it goes back untouched and makes no
                // call. Only here: on a known call or a handoff, a body a
                // party echoes with the mark changes nothing by itself.
                return Ok(ok_with_sdp(untouched));
            }
            if carries_no_media(&sdp) {
                // No media yet (RFC 3264 §5: an offer may have no m=
                // line; a re-INVITE adds them): nothing to relay, the body
                // goes on, and the offer that brings media makes the call.
                return Ok(ok_with_sdp(options.outgoing(sdp)));
            }
            // `user=callee`: a call to the user; the offerer is the remote.
            let user_is_callee =
                get_str(request, "user").is_some_and(|u| u.eq_ignore_ascii_case("callee"));
            let created = sessions
                .create_without_user(v1::CreateSessionRequest {
                    call_id: call_id.to_owned(),
                    from_tag: from_tag.to_owned(),
                    to_tag: to_tag.to_owned(),
                    aor: get_str(request, "aor").unwrap_or_default().to_owned(),
                    gruu: get_str(request, "gruu").unwrap_or_default().to_owned(),
                    sdp,
                    sdp_from: party(!user_is_callee),
                    other_family: options.other_family as i32,
                    nat_relearn: options.has("media-handover"),
                    asymmetric: options.has("asymmetric"),
                    other_transport: options.transport.clone().unwrap_or_default(),
                    sdes: options.sdes.clone(),
                    webrtc: options.webrtc.clone(),
                    // The offerer's legs face the first interface named.
                    user_interface: options.interfaces[usize::from(user_is_callee)].clone(),
                    remote_interface: options.interfaces[usize::from(!user_is_callee)].clone(),
                    ..Default::default()
                })
                .await
                .map_err(|s| new_call_refused(&s, request))?;
            return Ok(ok_with_sdp(options.outgoing(created.sdp)));
        };
        if flagged || replaces {
            // Whichever way the proxy oriented the tags (from the user's
            // side or the remote's, as a Replaces header can be read
            // either way), the body is the user's device's: it never
            // updates the remote's leg, and an offer that cannot open a
            // transfer is refused, changing nothing.
            let gruu = get_str(request, "gruu")
                .filter(|g| !g.is_empty())
                .ok_or_else(|| {
                    error("a handoff (baton-handoff or replaces) needs the new device's gruu")
                })?;
            if !same_uri(gruu, &view.gruu) {
                return self.handoff(request, &view, gruu, sdp, &options).await;
            }
            if flagged {
                return Err(error(format!(
                    "handoff refused: {} is already the device of call {}",
                    excerpt(gruu),
                    excerpt(&view.call_id)
                )));
            }
            // The device that has the call, re-offering.
            return self
                .update(&view, sdp, true, String::new(), &options, true)
                .await;
        }
        // A re-INVITE in a branch the call no longer follows (a fork that
        // lost: its 183 came, another answered after it) would re-point the
        // media of the call's callee side.
        let branch = if from_tag == view.from_tag {
            to_tag
        } else {
            from_tag
        };
        if exact && !branch.is_empty() && !view.to_tag.is_empty() && branch != view.to_tag {
            return Err(error(format!(
                "re-offer refused: branch {} of call {} is not the one the call follows ({})",
                excerpt(branch),
                excerpt(call_id),
                excerpt(&view.to_tag)
            )));
        }
        let from_user = view.side_of(from_tag) == Party::User;
        self.update(&view, sdp, from_user, String::new(), &options, true)
            .await
    }

    /// A body from one side of a known dialog: the session updated, the
    /// reply the body for the other side. `to_tag` sets the dialog's to-tag
    /// (empty: unchanged).
    async fn update(
        &self,
        view: &DialogView,
        sdp: String,
        from_user: bool,
        to_tag: String,
        options: &Options,
        offer: bool,
    ) -> Result<Value, Value> {
        let updated = self
            .service
            .sessions()
            .update(v1::UpdateSessionRequest {
                session: Some(by_id(view.id)),
                to_tag,
                sdp,
                sdp_from: party(from_user),
                // An answer keeps the transport the offer set (rtpengine
                // too); its SDES options still apply.
                other_transport: if offer {
                    options.transport.clone().unwrap_or_default()
                } else {
                    String::new()
                },
                sdes: options.sdes.clone(),
                webrtc: if offer { options.webrtc.clone() } else { None },
                ..Default::default()
            })
            .await
            .map_err(|s| status_reply(&s))?;
        Ok(ok_with_sdp(options.outgoing(updated.sdp)))
    }

    /// An offer from the user's side naming another device: a transfer.
    /// Its reply is the body the remote already has (nothing changes for
    /// the remote); the next `answer` gets the new device's body.
    async fn handoff(
        &self,
        request: &Dict,
        view: &DialogView,
        gruu: &str,
        sdp: String,
        options: &Options,
    ) -> Result<Value, Value> {
        let sessions = self.service.sessions();
        if let Some(replaces) = get_str(request, "replaces").filter(|r| !r.is_empty()) {
            let names_this_call = if replaces.contains(';') {
                crate::sessions::parse_replaces(replaces)
                    .ok()
                    .and_then(|(dialog, _)| {
                        sessions
                            .find_dialog(&dialog.call_id, &dialog.from_tag, &dialog.to_tag)
                            .ok()
                    })
                    .is_some_and(|found| found.id == view.id)
            } else {
                replaces == view.call_id
            };
            if !names_this_call {
                return Err(error(format!(
                    "replaces {} does not name call {}",
                    excerpt(replaces),
                    excerpt(&view.call_id)
                )));
            }
        }
        let ng_dialog = match (
            get_str(request, "new-call-id"),
            get_str(request, "new-from-tag"),
        ) {
            (Some(call_id), Some(from_tag)) if !call_id.is_empty() && !from_tag.is_empty() => {
                Some((call_id.to_owned(), from_tag.to_owned()))
            }
            _ => None,
        };
        sessions
            .transfer(
                v1::TransferRequest {
                    session: Some(by_id(view.id)),
                    gruu: gruu.to_owned(),
                    sdp,
                    // Kamailio sends `received-from` with every request: the
                    // new device's media is accepted from that IP only where
                    // the SDP gives no address.
                    source_ip: options
                        .received_from
                        .map(|ip| ip.to_string())
                        .unwrap_or_default(),
                    sdes: options.sdes.clone(),
                    // `baton-switch-on-commit`: the proxy says when (a
                    // `query` with `baton-commit` once the new device's
                    // ACK confirmed its dialog); until then the new
                    // device's media is not forwarded, and a cancelled
                    // handoff rolls back whatever it sent.
                    mode: if options.has("baton-switch-on-commit") {
                        v1::SwitchMode::Commit as i32
                    } else {
                        v1::SwitchMode::FirstPacket as i32
                    },
                    // The new device's own side may be another network.
                    interface: options.interfaces[0].clone(),
                    ..Default::default()
                },
                TransferContext { ng_dialog },
            )
            .await
            .map_err(|s| status_reply(&s))?;
        let to_remote = sessions
            .last_sdp_sent(view.id, Party::Remote)
            .ok_or_else(|| error("the session has no SDP for the remote side"))?;
        Ok(ok_with_sdp(options.outgoing(to_remote)))
    }

    async fn answer(&self, request: &Dict) -> Result<Value, Value> {
        let call_id = required(request, "call-id")?;
        let from_tag = required(request, "from-tag")?;
        let to_tag = required(request, "to-tag")?;
        let sdp = required(request, "sdp")?;
        let options = self.options(request)?;
        let sessions = self.service.sessions();
        let sdp = options.incoming(sdp, sessions).map_err(error)?;
        let view = match sessions.find_dialog(call_id, from_tag, to_tag) {
            Ok(view) => view,
            // The first answer: the session does not know the to-tag yet
            // (or a later branch of a forked call answers).
            Err(status) if status.code == v1::Code::NotFound => {
                match sessions.find_dialog(call_id, from_tag, "") {
                    Ok(view) => view,
                    // The answer to an offer without media.
                    Err(status) if status.code == v1::Code::NotFound && carries_no_media(&sdp) => {
                        return Ok(ok_with_sdp(options.outgoing(sdp)));
                    }
                    Err(status) => return Err(status_reply(&status)),
                }
            }
            Err(status) => return Err(status_reply(&status)),
        };
        // The body comes from the to-tag's side.
        let from_user = view.side_of(to_tag) == Party::User;
        if from_user && let Some(gruu) = get_str(request, "gruu").filter(|g| !g.is_empty()) {
            // A call to the user: the answering device is the user's.
            sessions
                .name_user_device(view.id, get_str(request, "aor").unwrap_or_default(), gruu)
                .map_err(|s| status_reply(&s))?;
        }
        if !from_user && let Some(answer) = sessions.take_transfer_answer(view.id) {
            // The proxy replays the remote's body after a handoff offer: the
            // new device gets the relay's answer for it.
            return Ok(ok_with_sdp(options.outgoing(answer)));
        }
        // The dialog's to-tag: whichever tag is not the offerer's.
        let dialog_to_tag = if from_tag == view.from_tag {
            to_tag
        } else {
            from_tag
        };
        self.update(
            &view,
            sdp,
            from_user,
            dialog_to_tag.to_owned(),
            &options,
            false,
        )
        .await
    }

    /// The sessions a delete or query names: one dialog, a branch by tag,
    /// or the whole call.
    fn select(&self, request: &Dict) -> Result<Vec<SessionId>, Value> {
        let call_id = required(request, "call-id")?;
        let from_tag = get_str(request, "from-tag").filter(|t| !t.is_empty());
        let to_tag = get_str(request, "to-tag").filter(|t| !t.is_empty());
        let sessions = self.service.sessions();
        let ids = match (from_tag, to_tag) {
            (Some(from), Some(to)) => sessions
                .find_dialog(call_id, from, to)
                .map(|v| vec![v.id])
                .unwrap_or_else(|_| sessions.sessions_of_call(call_id, Some(from))),
            (Some(tag), None) | (None, Some(tag)) => sessions.sessions_of_call(call_id, Some(tag)),
            (None, None) => sessions.sessions_of_call(call_id, None),
        };
        if ids.is_empty() {
            return Err(error(NOT_FOUND_REASON));
        }
        Ok(ids)
    }

    /// `delete`, with rtpengine's `fatal` and `fast`: a call or tag not
    /// found is a warning unless `fatal` asks for an error; `fast` leaves
    /// the statistics out.
    async fn delete(&self, request: &Dict) -> Result<Value, Value> {
        let flags = get_list(request, "flags");
        let flagged = |name: &str| flags.iter().any(|f| f == name);
        match self.delete_call(request).await {
            Ok(_) if flagged("fast") => Ok(dict([("result", text("ok"))])),
            Err(Value::Dict(reply)) if !flagged("fatal") => match get_str(&reply, "error-reason") {
                Some(reason) if reason.starts_with(NOT_FOUND_REASON) => {
                    Ok(dict([("result", text("ok")), ("warning", text(reason))]))
                }
                Some(_) | None => Err(Value::Dict(reply)),
            },
            other => other,
        }
    }

    async fn delete_call(&self, request: &Dict) -> Result<Value, Value> {
        let sessions = self.service.sessions();
        let call_id = required(request, "call-id")?;
        if sessions.sessions_of_call(call_id, None).is_empty()
            && let Some(id) = sessions.session_of_transfer_dialog(
                call_id,
                get_str(request, "from-tag").filter(|t| !t.is_empty()),
            )
        {
            // The new device's own dialog of a handoff (its INVITE failed):
            // the handoff is cancelled, the call goes on with the device it
            // had.
            sessions
                .cancel_transfer_of_dialog(id)
                .await
                .map_err(|s| status_reply(&s))?;
            return Ok(dict([("result", text("ok"))]));
        }
        let from_tag = get_str(request, "from-tag").filter(|t| !t.is_empty());
        let to_tag = get_str(request, "to-tag").filter(|t| !t.is_empty());
        if let (Some(from_tag), Some(to_tag)) = (from_tag, to_tag) {
            return self.delete_dialog(call_id, from_tag, to_tag).await;
        }
        let ids = self.select(request)?;
        let mut infos = Vec::with_capacity(ids.len());
        for id in ids {
            match self.service.sessions().delete(Some(&by_id(id))).await {
                Ok(info) => infos.push(info),
                Err(status) if status.code == v1::Code::NotFound => {}
                Err(status) => return Err(status_reply(&status)),
            }
        }
        if infos.is_empty() {
            return Err(error(NOT_FOUND_REASON));
        }
        Ok(statistics(&infos))
    }

    /// A delete naming both tags: the branch the to-tag (or, the other way
    /// round, the from-tag) names, as rtpengine ends one branch of a
    /// forked call; a tag no branch has deletes nothing, except on a call
    /// never answered (a CANCEL's or a failure's to-tag), which goes whole.
    async fn delete_dialog(
        &self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
    ) -> Result<Value, Value> {
        let sessions = self.service.sessions();
        let not_found = || {
            error(format!(
                "{NOT_FOUND_REASON}: to-tag {} is no branch of call {}",
                excerpt(to_tag),
                excerpt(call_id)
            ))
        };
        let (id, branch) = match sessions.find_dialog(call_id, from_tag, to_tag) {
            Ok(view) if view.from_tag == from_tag => (view.id, to_tag),
            Ok(view) => (view.id, from_tag),
            Err(status) if status.code == v1::Code::NotFound => {
                match sessions.find_dialog(call_id, from_tag, "") {
                    Ok(view) if view.to_tag.is_empty() => (view.id, ""),
                    Ok(_) | Err(_) => return Err(not_found()),
                }
            }
            Err(status) => return Err(status_reply(&status)),
        };
        let ended = if branch.is_empty() {
            sessions
                .delete(Some(&by_id(id)))
                .await
                .map(|info| BranchEnd::Session(Box::new(info)))
        } else {
            sessions.delete_branch(id, branch).await
        };
        match ended.map_err(|s| status_reply(&s))? {
            BranchEnd::Session(info) => Ok(statistics(&[*info])),
            BranchEnd::Branch => {
                let info = sessions
                    .get(Some(&by_id(id)))
                    .await
                    .map_err(|s| status_reply(&s))?;
                Ok(statistics(&[info]))
            }
        }
    }

    /// `block media`, `silence media`, `block DTMF` and their opposites:
    /// for the participant whose tag `from-tag` is, else for the whole
    /// call; an unblock with the `all` flag also clears what was set for
    /// each participant.
    async fn control(&self, request: &Dict, control: Control, on: bool) -> Result<Value, Value> {
        if request.contains_key(b"label".as_slice()) {
            return Err(error(
                "label is not implemented by baton on media commands: it selects participants by from-tag",
            ));
        }
        let call_id = required(request, "call-id")?;
        let sessions = self.service.sessions();
        let ids = sessions.sessions_of_call(call_id, None);
        if ids.is_empty() {
            return Err(error(NOT_FOUND_REASON));
        }
        let tag = get_str(request, "from-tag").filter(|t| !t.is_empty());
        let all = get_list(request, "flags").iter().any(|f| f == "all");
        let mut found = false;
        for id in ids {
            let target = match tag {
                Some(tag) => match sessions.party_of_tag(id, tag) {
                    Some(party) => ControlTarget::Party(party),
                    None => continue,
                },
                None if all && !on => ControlTarget::Everything,
                None => ControlTarget::Call,
            };
            match sessions.control_media(id, target, control, on).await {
                Ok(()) => found = true,
                // Ended meanwhile.
                Err(status) if status.code == v1::Code::NotFound => {}
                Err(status) => return Err(status_reply(&status)),
            }
        }
        if !found {
            return Err(error(format!(
                "{NOT_FOUND_REASON}: no participant of call {} has tag {}",
                excerpt(call_id),
                excerpt(tag.unwrap_or_default())
            )));
        }
        Ok(dict([("result", text("ok"))]))
    }

    /// `statistics`: rtpengine's current and total figures, from what
    /// baton counts (interval and per-proxy figures are not kept).
    async fn statistics(&self) -> Value {
        let sessions = self.service.sessions();
        let telemetry = sessions.telemetry();
        let current = sessions.session_count() as u64;
        let cached = self
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .filter(|(at, _)| at.elapsed() < std::time::Duration::from_secs(1))
            .map(|(_, stats)| stats.clone());
        let stats = match cached {
            Some(stats) => stats,
            None => {
                let fresh = self.service.stats_now().await;
                *self
                    .stats
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some((std::time::Instant::now(), fresh.clone()));
                fresh
            }
        };
        // Requests so far of one command with one outcome.
        let requests = |command: &str, code: &str| -> u64 {
            telemetry
                .ng_requests
                .get_or_create(&crate::telemetry::RequestLabels {
                    command: command.to_owned(),
                    code: code.to_owned(),
                })
                .get()
        };
        let command_count = |command: &str| requests(command, "ok") + requests(command, "error");
        let errors: u64 = crate::telemetry::NG_COMMANDS
            .iter()
            .map(|command| requests(command, "error"))
            .sum();
        let dict_of = |pairs: Vec<(&str, Value)>| {
            Value::Dict(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), v))
                    .collect(),
            )
        };
        let control = dict_of(
            [
                ("totalpingcount", "ping"),
                ("totaloffercount", "offer"),
                ("totalanswercount", "answer"),
                ("totaldeletecount", "delete"),
                ("totalquerycount", "query"),
                ("totallistcount", "list"),
                ("totalblkdtmfcount", "block DTMF"),
                ("totalunblkdtmfcount", "unblock DTMF"),
                ("totalblkmedia", "block media"),
                ("totalunblkmedia", "unblock media"),
                ("totalstatistics", "statistics"),
            ]
            .into_iter()
            .map(|(key, command)| (key, int(command_count(command))))
            .chain([("totalerrorcount", int(errors))])
            .collect(),
        );
        dict([
            ("result", text("ok")),
            (
                "statistics",
                dict([
                    (
                        "currentstatistics",
                        dict_of(vec![
                            ("sessionsown", int(current)),
                            ("sessionsforeign", int(0)),
                            ("sessionstotal", int(current)),
                            ("transcodedmedia", int(0)),
                        ]),
                    ),
                    (
                        "totalstatistics",
                        dict_of(vec![
                            ("uptime", text(stats.uptime_seconds.to_string())),
                            ("managedsessions", int(stats.sessions_created)),
                            ("timeoutsessions", int(stats.sessions_timed_out)),
                            (
                                "regularterminatedsessions",
                                int(stats
                                    .sessions_ended
                                    .saturating_sub(stats.sessions_timed_out)),
                            ),
                            ("relayedpackets", int(stats.packets_forwarded)),
                            ("relayedpacketerrors", int(stats.packets_dropped)),
                        ]),
                    ),
                    ("controlstatistics", control),
                ]),
            ),
        ])
    }

    /// The registrar's binding of a device, sent by the proxy after a
    /// REGISTER (`rtpengine_query("baton-bind aor=… gruu=… expires=…")`):
    /// the same table and checks as the native `RegisterDevice`; `expires`
    /// 0 removes it. The request's Call-ID and tags (the REGISTER's) are
    /// not a call and are not looked up.
    fn bind(&self, request: &Dict) -> Result<Value, Value> {
        let aor = required(request, "aor")?;
        let gruu = required(request, "gruu")?;
        let expires = match request.get(b"expires".as_slice()) {
            Some(Value::Int(n)) => u32::try_from(*n).ok(),
            Some(Value::Bytes(b)) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.trim().parse().ok()),
            Some(Value::List(_) | Value::Dict(_)) | None => None,
        }
        .ok_or_else(|| error("baton-bind needs expires: whole seconds (0 removes the binding)"))?;
        self.service
            .sessions()
            .devices()
            .register_device(&v1::RegisterDeviceRequest {
                aor: aor.to_owned(),
                gruu: gruu.to_owned(),
                expires,
                temporary: false,
            })
            .map_err(|s| status_reply(&s))?;
        Ok(dict([("result", text("ok"))]))
    }

    /// The proxy's word that the new device's dialog is confirmed (its ACK
    /// came): the handoff opened with `baton-switch-on-commit` switches
    /// now. An error when no handoff is pending on the call (it timed out or
    /// was cancelled).
    async fn commit(&self, request: &Dict) -> Result<Value, Value> {
        let call_id = required(request, "call-id")?;
        let from_tag = required(request, "from-tag")?;
        let to_tag = get_str(request, "to-tag").unwrap_or_default();
        let sessions = self.service.sessions();
        let view = sessions
            .find_dialog(call_id, from_tag, to_tag)
            .map_err(|s| status_reply(&s))?;
        sessions
            .commit_transfer(Some(&by_id(view.id)), 0)
            .await
            .map_err(|s| status_reply(&s))?;
        Ok(dict([("result", text("ok"))]))
    }

    async fn query(&self, request: &Dict) -> Result<Value, Value> {
        let ids = self.select(request)?;
        let mut infos = Vec::with_capacity(ids.len());
        for id in ids {
            if let Ok(info) = self.service.sessions().get(Some(&by_id(id))).await {
                infos.push(info);
            }
        }
        if infos.is_empty() {
            return Err(error(NOT_FOUND_REASON));
        }
        Ok(statistics(&infos))
    }

    fn list(&self, request: &Dict) -> Value {
        let limit = match request.get(b"limit".as_slice()) {
            Some(Value::Int(n)) => usize::try_from(*n).unwrap_or(0),
            Some(Value::Bytes(b)) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(DEFAULT_LIST_LIMIT),
            Some(Value::List(_) | Value::Dict(_)) | None => DEFAULT_LIST_LIMIT,
        };
        let calls = self.service.sessions().call_ids(limit);
        dict([
            ("result", text("ok")),
            ("calls", Value::List(calls.into_iter().map(text).collect())),
        ])
    }
}

fn party(from_user: bool) -> i32 {
    if from_user {
        v1::Party::User as i32
    } else {
        v1::Party::Remote as i32
    }
}

/// Whether two URIs name the same device (RFC 3261 §19.1.4), or are the
/// same text when either does not parse.
fn same_uri(a: &str, b: &str) -> bool {
    let parse = |t: &str| crate::bindings::parse_gruu(t, false).ok();
    match (parse(a), parse(b)) {
        (Some(a), Some(b)) => a.equivalent(&b),
        (Some(_) | None, Some(_) | None) => a == b,
    }
}

fn int(value: u64) -> Value {
    Value::Int(i64::try_from(value).unwrap_or(i64::MAX))
}

/// Final or current statistics in rtpengine's shape: per tag, per media,
/// per component; and totals.
fn statistics(infos: &[v1::SessionInfo]) -> Value {
    let mut tags = std::collections::HashMap::new();
    let (mut rtp_packets, mut rtp_bytes, mut rtcp_packets, mut errors) = (0u64, 0u64, 0u64, 0u64);
    let created_ms = infos.iter().map(|i| i.created_unix_ms).min().unwrap_or(0);
    for info in infos {
        for (tag, pick) in [(&info.from_tag, Party::User), (&info.to_tag, Party::Remote)] {
            if tag.is_empty() {
                continue;
            }
            let medias: Vec<Value> = info
                .streams
                .iter()
                .enumerate()
                .map(|(index, stream)| {
                    let leg = match pick {
                        Party::User => stream.user.as_ref(),
                        Party::Remote => stream.remote.as_ref(),
                    };
                    let stats = leg.and_then(|l| l.stats.clone()).unwrap_or_default();
                    let drops: u64 = stats.drops.values().sum();
                    rtp_packets += stats.rtp_packets_in;
                    rtp_bytes += stats.bytes_in;
                    rtcp_packets += stats.rtcp_packets_in;
                    errors += drops;
                    let component = |local: &str, peer: &str, packets: u64, what: &str| {
                        let local: Option<SocketAddr> = local.parse().ok();
                        let peer: Option<SocketAddr> = peer.parse().ok();
                        let family = |a: &SocketAddr| if a.is_ipv6() { "IPv6" } else { "IPv4" };
                        dict([
                            ("local port", int(local.map_or(0, |a| u64::from(a.port())))),
                            (
                                "local address",
                                text(local.map(|a| a.ip().to_string()).unwrap_or_default()),
                            ),
                            ("family", text(local.as_ref().map_or("IPv4", family))),
                            (
                                "endpoint",
                                dict([
                                    ("family", text(peer.as_ref().map_or("IPv4", family))),
                                    (
                                        "address",
                                        text(peer.map(|a| a.ip().to_string()).unwrap_or_default()),
                                    ),
                                    ("port", int(peer.map_or(0, |a| u64::from(a.port())))),
                                ]),
                            ),
                            ("flags", Value::List(vec![text(what)])),
                            (
                                "stats",
                                dict([
                                    ("packets", int(packets)),
                                    ("bytes", int(if what == "RTP" { stats.bytes_in } else { 0 })),
                                    ("errors", int(if what == "RTP" { drops } else { 0 })),
                                ]),
                            ),
                        ])
                    };
                    let local = leg.and_then(|l| l.local.clone()).unwrap_or_default();
                    let peer = leg.and_then(|l| l.peer.clone()).unwrap_or_default();
                    let codec = stream
                        .codecs
                        .first()
                        .map(|c| format!("{}/{}", c.name, c.clock_rate))
                        .unwrap_or_default();
                    dict([
                        ("index", int(index as u64 + 1)),
                        ("type", text(stream.kind.clone())),
                        ("protocol", text("RTP/AVP")),
                        ("codec", text(codec)),
                        (
                            "streams",
                            Value::List(vec![
                                component(&local.rtp, &peer.rtp, stats.rtp_packets_in, "RTP"),
                                component(&local.rtcp, &peer.rtcp, stats.rtcp_packets_in, "RTCP"),
                            ]),
                        ),
                    ])
                })
                .collect();
            tags.insert(
                tag.as_bytes().to_vec(),
                dict([
                    ("tag", text(tag.clone())),
                    ("created", int(info.created_unix_ms / 1000)),
                    ("medias", Value::List(medias)),
                ]),
            );
        }
    }
    let now_s = crate::events::unix_time_ms() / 1000;
    dict([
        ("result", text("ok")),
        ("created", int(created_ms / 1000)),
        ("created_us", int((created_ms % 1000) * 1000)),
        ("last signal", int(now_s)),
        ("SSRC", Value::Dict(std::collections::HashMap::new())),
        ("tags", Value::Dict(tags)),
        (
            "totals",
            dict([
                (
                    "RTP",
                    dict([
                        ("packets", int(rtp_packets)),
                        ("bytes", int(rtp_bytes)),
                        ("errors", int(errors)),
                    ]),
                ),
                (
                    "RTCP",
                    dict([
                        ("packets", int(rtcp_packets)),
                        ("bytes", int(0)),
                        ("errors", int(0)),
                    ]),
                ),
            ]),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 24: a new call the relay cannot take is refused in the words
    /// Kamailio's rtpengine module fails over on (it compares them whole).
    #[test]
    fn a_full_or_draining_relay_refuses_a_new_call_in_rtpengines_words() {
        use crate::status::Capacity;
        let reason_of = |value: &Value| match value {
            Value::Dict(d) => (
                get_str(d, "result").unwrap_or_default().to_owned(),
                get_str(d, "error-reason").unwrap_or_default().to_owned(),
            ),
            Value::Bytes(_) | Value::Int(_) | Value::List(_) => panic!("a dictionary"),
        };
        let plain = Dict::new();
        let full =
            Status::resource_exhausted("session limit reached (1)").capacity(Capacity::Sessions);
        assert_eq!(
            reason_of(&new_call_refused(&full, &plain)),
            (
                "error".to_owned(),
                "Parallel session limit reached".to_owned()
            )
        );
        let ports = Status::resource_exhausted("no free relay ports").capacity(Capacity::Ports);
        assert_eq!(
            reason_of(&new_call_refused(&ports, &plain)).1,
            "Ran out of ports"
        );
        let draining = Status::unavailable("draining").capacity(Capacity::Draining);
        assert_eq!(
            reason_of(&new_call_refused(&draining, &plain)).1,
            "Parallel session limit reached"
        );
        let mut supports = Dict::new();
        supports.insert(b"supports".to_vec(), Value::List(vec![text("load limit")]));
        assert_eq!(
            reason_of(&new_call_refused(&draining, &supports)).0,
            "load limit"
        );
        let other = Status::invalid_argument("bad SDP");
        assert_eq!(reason_of(&new_call_refused(&other, &supports)).1, "bad SDP");
    }

    /// Review finding: one Call-ID could tie up every request slot of the
    /// listener with requests waiting on each other. Past
    /// `MAX_WAITING_PER_CALL` a request is refused at once; other calls are
    /// unaffected.
    #[tokio::test]
    async fn one_call_cannot_queue_more_than_its_share() {
        let locks = Arc::new(CallLocks::default());
        let holder = locks.lock("busy").await.expect("first request runs");
        let mut waiters = Vec::new();
        for _ in 1..MAX_WAITING_PER_CALL {
            let locks = Arc::clone(&locks);
            waiters.push(tokio::spawn(
                async move { locks.lock("busy").await.is_some() },
            ));
        }
        // Let every waiter reach the lock.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(locks.lock("busy").await.is_none(), "one too many waits");
        assert!(locks.lock("other").await.is_some(), "other calls go on");
        drop(holder);
        for waiter in waiters {
            assert!(waiter.await.expect("waiter"), "each waiter ran in turn");
        }
        assert!(locks.lock("busy").await.is_some(), "the call is free again");
    }
}
