//! What baton does with every key and flag an ng request can carry.
//!
//! rtpengine logs a word it does not know and goes on; a proxy's operator
//! then cannot tell what the relay did not do. baton answers every word
//! it does not implement with an error naming it, and accepts without
//! acting only the words that are advisory (rtpengine's own obsolete
//! flags, hints baton has no use for), each with the reason written here
//! and in docs/kamailio.md's table. [`canonical`] turns a request into
//! one whose keys and flags are in one spelling, with `rtpp-flags` (the
//! flag string Kamailio passes whole when the daemon is to parse it) read
//! the way Kamailio's module reads it, and refuses what baton does not do.

use std::collections::HashMap;

use serde_bencode::value::Value;
use tracing::debug;

use super::wire::{Dict, text};
use crate::status::excerpt;

/// What baton does with a word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    /// baton acts on it, as described.
    Acts(&'static str),
    /// Accepted and left alone, for the reason given.
    Ignored(&'static str),
    /// Refused by name, for the reason given.
    Refused(&'static str),
}

use Treatment::{Acts, Ignored, Refused};

const NO_TRANSCODING: &str = "baton relays media unchanged and never transcodes";
const NO_RECORDING: &str = "baton records a call as a pcap and a JSON file in recording-dir; it has no other recording options";
const NO_T38: &str =
    "baton relays T.38 (m=image udptl) as it comes and does not gateway between T.38 and audio";
const NO_MEDIA_PLAYER: &str = "baton plays no media, DTMF or music on hold";
const NO_LABELS: &str = "baton selects call participants by tag, not by label";
const NO_SUBSCRIPTIONS: &str = "baton does not fork media to subscribers";
const NO_DTMF_HANDLING: &str =
    "baton relays DTMF events as they come and neither detects, injects nor blocks them";

/// A word and what baton does with it.
pub type Word = (&'static str, Treatment);

/// Top-level keys, by their canonical spelling (lower case, words joined
/// by `-`).
pub const KEYS: &[Word] = &[
    ("command", Acts("one of the commands in the table above")),
    ("call-id", Acts("as in rtpengine")),
    ("from-tag", Acts("as in rtpengine")),
    (
        "to-tag",
        Acts("as in rtpengine; on a `delete` one branch of a forked call"),
    ),
    ("sdp", Acts("as in rtpengine")),
    ("flags", Acts("each entry is read by this table")),
    (
        "rtpp-flags",
        Acts(
            "the flag string Kamailio passes whole when the daemon is to parse it: read as Kamailio's module reads a flag string, each word then by this table; read after the other keys, it overrides them, as in rtpengine",
        ),
    ),
    ("replace", Acts("values: see `replace-…`")),
    (
        "received-from",
        Acts(
            "with `SIP-source-address`, the media is where the SIP message came from; on a handoff offer, the only IP the new device is accepted from where the body gives no address",
        ),
    ),
    (
        "media-address",
        Acts("the sender's media address, whatever the body and the SIP source say"),
    ),
    (
        "address-family",
        Acts("IP version of the relay's legs toward the recipient (`IP4`, `IP6`)"),
    ),
    (
        "transport-protocol",
        Acts(
            "the transport toward the recipient: RTP/AVP(F), RTP/SAVP(F) (SDES), UDP/TLS/RTP/SAVP(F) (DTLS-SRTP); `accept` keeps the offer's",
        ),
    ),
    (
        "ice",
        Acts(
            "`remove`, `default`, `optional`: ICE only toward a WebRTC transport; `force`: ICE-lite toward the recipient; other values are refused",
        ),
    ),
    (
        "dtls",
        Acts("`passive`, `active`: the relay's DTLS role; `off` toward a plain or SDES recipient"),
    ),
    ("sdes", Acts("SDES options (see the SRTP section)")),
    (
        "osrtp",
        Acts("`accept`: a plain answer to an SRTP offer makes that leg plain; `offer` is refused"),
    ),
    (
        "rtcp-mux",
        Acts("`offer`, `require`, `demux`, `accept` as rtpengine; `reject` is refused"),
    ),
    (
        "codec",
        Acts(
            "`strip`, `mask`, `offer`, `except` change the body that goes out (no transcoding); the others are refused",
        ),
    ),
    (
        "supports",
        Acts("`load limit`: a draining relay answers `load limit`"),
    ),
    ("limit", Acts("`list`: how many Call-IDs")),
    (
        "record-call",
        Acts(
            "`yes`/`on`: the call is recorded from this message on (needs recording-dir); `no`/`off`: nothing",
        ),
    ),
    (
        "pause",
        Acts("`yes` on `stop recording`: pause instead (a start appends to the same file)"),
    ),
    (
        "delete-delay",
        Acts("`0` only: baton ends a deleted call at once"),
    ),
    // baton's handoff and registrar extensions.
    (
        "user",
        Acts("baton: `callee` when the offerer is the remote party (handoff below)"),
    ),
    (
        "aor",
        Acts("baton: the user's address of record (handoff below)"),
    ),
    ("gruu", Acts("baton: the device's GRUU (handoff below)")),
    (
        "replaces",
        Acts("baton: the Replaces header of a handoff INVITE (handoff below)"),
    ),
    (
        "new-call-id",
        Acts("baton: the new device's own dialog of a handoff (handoff below)"),
    ),
    (
        "new-from-tag",
        Acts("baton: the new device's own dialog of a handoff (handoff below)"),
    ),
    (
        "expires",
        Acts("baton: `baton-bind` lifetime (handoff below)"),
    ),
    (
        "via-branch",
        Ignored("baton tells the branches of a forked call apart by their to-tags"),
    ),
    (
        "sip-message-type",
        Ignored("the command says whether a body is an offer or an answer"),
    ),
    (
        "sip-code",
        Ignored("the command says whether a body is an offer or an answer"),
    ),
    (
        "label",
        Acts(
            "on an offer or answer, ignored (baton keeps no labels); on a media command, refused: baton selects participants by tag",
        ),
    ),
    (
        "set-label",
        Ignored("baton keeps no labels: it selects call participants by tag"),
    ),
    (
        "metadata",
        Ignored("metadata is for rtpengine's recording daemon, which baton does not feed"),
    ),
    (
        "xmlrpc-callback",
        Ignored(
            "baton does not call the proxy back on a media timeout; its timeouts end the session and count in /metrics",
        ),
    ),
    (
        "direction",
        Acts(
            "two interface names: the offerer's legs' and the recipient's, on a call's first offer (later offers and answers keep them); on a handoff offer, the first is the new device's. rtpengine's legacy `internal`/`external`, on a relay without interfaces of those names, choose nothing",
        ),
    ),
    ("from-interface", Acts("as the first `direction` name")),
    ("to-interface", Acts("as the second `direction` name")),
    (
        "interface",
        Refused("for rtpengine's one-sided commands (publish), which baton does not implement"),
    ),
    ("t.38", Refused(NO_T38)),
    ("ptime", Refused(NO_TRANSCODING)),
    ("ptime-reverse", Refused(NO_TRANSCODING)),
    ("repacketize", Refused(NO_TRANSCODING)),
    ("from-label", Refused(NO_LABELS)),
    ("to-label", Refused(NO_LABELS)),
    ("from-tags", Refused(NO_SUBSCRIPTIONS)),
    ("output-destination", Refused(NO_RECORDING)),
    ("recording-file", Refused(NO_RECORDING)),
    ("recording-path", Refused(NO_RECORDING)),
    ("recording-pattern", Refused(NO_RECORDING)),
    (
        "tos",
        Refused("baton does not set a TOS/DSCP value per call"),
    ),
    (
        "ice-lite",
        Refused("baton is always ICE-lite toward a WebRTC peer and never toward a SIP phone"),
    ),
    (
        "dtls-fingerprint",
        Refused("baton's DTLS certificate has one SHA-256 fingerprint"),
    ),
    (
        "dtls-reverse",
        Refused("baton's DTLS role toward each party is set by DTLS=active/passive"),
    ),
    (
        "endpoint-learning",
        Refused("baton learns a peer's address by its own rules (see learning-window)"),
    ),
    ("media-echo", Refused("baton does not echo media")),
    (
        "drop-traffic",
        Refused("baton has no per-call switch to drop all traffic"),
    ),
    ("delay-buffer", Refused("baton delays no media")),
    ("dtmf-delay", Refused(NO_DTMF_HANDLING)),
    ("dtmf-security", Refused(NO_DTMF_HANDLING)),
    ("dtmf-log-dest", Refused(NO_DTMF_HANDLING)),
    ("frequency", Refused(NO_MEDIA_PLAYER)),
    ("volume", Refused(NO_MEDIA_PLAYER)),
    ("file", Refused(NO_MEDIA_PLAYER)),
    ("blob", Refused(NO_MEDIA_PLAYER)),
    ("moh", Refused(NO_MEDIA_PLAYER)),
    (
        "sdp-attr",
        Refused("baton does not add, remove or substitute SDP attributes on request"),
    ),
    (
        "sdp-media-remove",
        Refused("baton does not remove m= lines on request"),
    ),
    (
        "extmap",
        Refused("baton does not filter RTP header extensions"),
    ),
    (
        "bundle",
        Refused("baton bundles toward WebRTC peers by itself (see docs/webrtc.md)"),
    ),
    (
        "generate-rtcp",
        Refused("baton relays RTCP and does not generate its own"),
    ),
    ("template", Refused("baton has no flag templates")),
];

/// Spellings rtpengine reads for the same key.
const KEY_ALIASES: &[(&str, &str)] = &[
    ("t38", "t.38"),
    ("codecs", "codec"),
    ("dtmf-log-destination", "dtmf-log-dest"),
    ("frequencies", "frequency"),
    ("blob64", "blob"),
    ("reverse-ptime", "ptime-reverse"),
    ("output-dest", "output-destination"),
    ("sip-response-code", "sip-code"),
];

/// Flags (entries of the `flags` list, or bare words of a flag string).
pub const FLAGS: &[Word] = &[
    (
        "symmetric",
        Acts("always: a signalled peer's media is accepted from that address only"),
    ),
    (
        "asymmetric",
        Acts("media accepted from any source, still sent to the signalled address"),
    ),
    (
        "port-latching",
        Acts("always: the relay's ports stay for the whole call"),
    ),
    (
        "strict-source",
        Acts("always: once a leg knows its peer it accepts nothing else"),
    ),
    (
        "media-handover",
        Acts("the session follows a device to a new source address when the same SSRC continues"),
    ),
    ("trust-address", Acts("the body's addresses (the default)")),
    (
        "sip-source-address",
        Acts("with `received-from`, the media address is where the SIP message came from"),
    ),
    (
        "no-rtcp-attribute",
        Acts("always: baton adds no a=rtcp line (it rewrites the sender's)"),
    ),
    (
        "generate-mid",
        Acts("always toward a WebRTC peer: every m= line gets a MID"),
    ),
    (
        "loop-protect",
        Acts(
            "a body going out carries `a=baton:<instance>`; a new call's offer that comes back with this relay's mark is returned untouched and makes no call (on a known call or a handoff the mark changes nothing)",
        ),
    ),
    ("pad-crypto", Acts("as `SDES-pad`")),
    (
        "webrtc",
        Acts("as `transport-protocol=UDP/TLS/RTP/SAVPF` (ICE-lite, DTLS-SRTP, rtcp-mux, MIDs)"),
    ),
    (
        "fatal",
        Acts(
            "`delete` of a call or tag baton does not know is an error (else a warning, as rtpengine)",
        ),
    ),
    ("fast", Acts("`delete` replies without statistics")),
    (
        "baton-handoff",
        Acts("baton: this offer is a handoff (handoff below)"),
    ),
    (
        "baton-bind",
        Acts("baton: a `query` carrying a registrar's binding (handoff below)"),
    ),
    (
        "baton-commit",
        Acts("baton: a `query` saying the new device's dialog is confirmed (handoff below)"),
    ),
    (
        "baton-switch-on-commit",
        Acts("baton: the handoff switches at `baton-commit` (handoff below)"),
    ),
    (
        "to-tag",
        Ignored("baton always honours a delete's to-tag (one branch of a forked call)"),
    ),
    (
        "allow-transcoding",
        Ignored("a permission; baton never transcodes"),
    ),
    (
        "no-jitter-buffer",
        Ignored("baton has no jitter buffer to turn off"),
    ),
    (
        "allow-asymmetric-codecs",
        Ignored("baton relays whatever payload types each side sends"),
    ),
    (
        "symmetric-codecs",
        Ignored("obsolete; rtpengine ignores it too"),
    ),
    (
        "asymmetric-codecs",
        Ignored("obsolete; rtpengine ignores it too"),
    ),
    (
        "reorder-codecs",
        Ignored("obsolete; rtpengine ignores it too"),
    ),
    ("debug", Ignored("baton's logging is set by log-level")),
    ("no-redis-update", Ignored("baton keeps no state in Redis")),
    (
        "record-call",
        Acts("the call is recorded from this message on (needs recording-dir)"),
    ),
    (
        "pause",
        Acts("`stop recording`: pause instead (a start appends to the same file)"),
    ),
    ("siprec", Refused(NO_RECORDING)),
    ("discard-recording", Refused(NO_RECORDING)),
    ("exclude-recording", Refused(NO_RECORDING)),
    ("skip-recording-db", Refused(NO_RECORDING)),
    ("recording-vsc", Refused(NO_RECORDING)),
    ("recording-announcement", Refused(NO_RECORDING)),
    ("force-transcoding", Refused(NO_TRANSCODING)),
    ("always-transcode", Refused(NO_TRANSCODING)),
    ("single-codec", Refused(NO_TRANSCODING)),
    ("static-codecs", Refused(NO_TRANSCODING)),
    ("reuse-codecs", Refused(NO_TRANSCODING)),
    ("no-codec-renegotiation", Refused(NO_TRANSCODING)),
    ("allow-no-codec-media", Refused(NO_TRANSCODING)),
    ("passthrough", Refused(NO_TRANSCODING)),
    ("no-passthrough", Refused(NO_TRANSCODING)),
    ("audio-player", Refused(NO_MEDIA_PLAYER)),
    ("no-audio-player", Refused(NO_MEDIA_PLAYER)),
    ("mix", Refused(NO_MEDIA_PLAYER)),
    (
        "block-dtmf",
        Refused("on an offer; the `block DTMF` command blocks a participant's DTMF"),
    ),
    ("detect-dtmf", Refused(NO_DTMF_HANDLING)),
    ("inject-dtmf", Refused(NO_DTMF_HANDLING)),
    ("block-egress", Refused("baton has no egress blocking")),
    (
        "block-short",
        Refused("baton relays short packets and counts malformed ones"),
    ),
    ("egress", Refused(NO_SUBSCRIPTIONS)),
    ("unsubscribe", Refused(NO_SUBSCRIPTIONS)),
    ("bidirectional", Refused(NO_SUBSCRIPTIONS)),
    (
        "directional",
        Acts(
            "media commands: the `from-tag` participant only (baton reads a `from-tag` so anyway)",
        ),
    ),
    (
        "all",
        Acts("`unblock …`/`unsilence media`: also what was set for each participant"),
    ),
    (
        "early-media",
        Refused("baton forwards early media as soon as both sides are known"),
    ),
    (
        "provisional",
        Refused(
            "baton takes every answer as final for its branch (a fork's branches are kept by to-tag)",
        ),
    ),
    (
        "inactive",
        Refused("baton does not rewrite a stream's direction on request"),
    ),
    (
        "original-sendrecv",
        Refused("baton does not rewrite a stream's direction on request"),
    ),
    (
        "reset",
        Refused("baton restarts ICE and DTLS when a peer's credentials change, not on request"),
    ),
    (
        "trickle-ice",
        Refused("baton is ICE-lite and has no candidates to trickle"),
    ),
    (
        "fragment",
        Refused("baton does not read trickle-ICE SDP fragments"),
    ),
    (
        "ice-reject",
        Refused("baton is ICE-lite; use ICE=remove toward a peer without ICE"),
    ),
    (
        "pierce-nat",
        Refused("baton learns a peer behind NAT from its first packet"),
    ),
    (
        "nat-wait",
        Refused("baton learns a peer behind NAT from its first packet"),
    ),
    (
        "no-port-latching",
        Refused("baton keeps a learnt address; media-handover lets a new source take over"),
    ),
    (
        "unidirectional",
        Refused("baton learns a peer's address from the packets it sends"),
    ),
    (
        "new-branch",
        Refused("baton opens a branch for each to-tag by itself"),
    ),
    (
        "full-rtcp-attribute",
        Refused("baton writes a=rtcp with the port only (RFC 3605 allows both)"),
    ),
    (
        "mirror-rtcp",
        Refused("baton relays RTCP; it does not mirror it"),
    ),
    (
        "recrypt",
        Refused("baton decrypts and re-encrypts SRTP whenever the two sides need it"),
    ),
    (
        "strip-extmap",
        Refused("baton does not filter RTP header extensions"),
    ),
    ("no-tls-id", Refused("baton writes no a=tls-id")),
    (
        "force-answer",
        Refused("send an answer command instead of an offer"),
    ),
];

/// Flag families: a prefix and what follows it (`SDES-no-…`, `codec-strip-PCMU`).
pub const FLAG_PREFIXES: &[Word] = &[
    ("sdes-", Acts("SDES options (see the SRTP section)")),
    ("osrtp-", Acts("as the `OSRTP` key")),
    ("ice-", Acts("as the `ICE` key")),
    ("dtls-", Acts("as the `DTLS` key")),
    ("rtcp-mux-", Acts("as the `rtcp-mux` key")),
    ("replace-", Acts("as the `replace` key; values below")),
    (
        "codec-strip-",
        Acts(
            "leaves the codec (NAME[/RATE[/CHANNELS]], a payload type, or `all`) out of the body that goes out",
        ),
    ),
    (
        "codec-mask-",
        Acts("as `codec-strip-`: without transcoding a masked codec could not be used"),
    ),
    (
        "codec-offer-",
        Acts("keeps the codec whatever is stripped and puts it first, in the order given"),
    ),
    (
        "codec-except-",
        Acts("keeps the codec whatever is stripped"),
    ),
    ("codec-transcode-", Refused(NO_TRANSCODING)),
    ("transcode-", Refused(NO_TRANSCODING)),
    ("codec-accept-", Refused(NO_TRANSCODING)),
    ("codec-consume-", Refused(NO_TRANSCODING)),
    ("codec-set-", Refused(NO_TRANSCODING)),
    ("codec-ignore-", Refused(NO_TRANSCODING)),
    ("t38-", Refused(NO_T38)),
    ("t.38-", Refused(NO_T38)),
    (
        "bundle-",
        Refused("baton bundles toward WebRTC peers by itself (see docs/webrtc.md)"),
    ),
    (
        "endpoint-learning-",
        Refused("baton learns a peer's address by its own rules (see learning-window)"),
    ),
    ("from-tags-", Refused(NO_SUBSCRIPTIONS)),
    (
        "sdp-attr-",
        Refused("baton does not add, remove or substitute SDP attributes on request"),
    ),
];

/// Spellings rtpengine reads for the same flag.
const FLAG_ALIASES: &[(&str, &str)] = &[
    ("allow-asymmetric-codec", "allow-asymmetric-codecs"),
    ("block-short-packets", "block-short"),
    ("block-shorts", "block-short"),
    ("debugging", "debug"),
    ("reject-ice", "ice-reject"),
    ("rtcp-mirror", "mirror-rtcp"),
    ("player", "audio-player"),
    ("no-player", "no-audio-player"),
    ("skip-recording-database", "skip-recording-db"),
    ("static-codec", "static-codecs"),
    ("allow-no-codec-medias", "allow-no-codec-media"),
    ("allow-empty-codec-media", "allow-no-codec-media"),
    ("allow-empty-codec-medias", "allow-no-codec-media"),
    ("mixed", "mix"),
    ("passthru", "passthrough"),
];

/// Values of the `replace` list (and `replace-…` flags).
pub const REPLACE: &[Word] = &[
    ("origin", Acts("the o= line names the relay's address")),
    (
        "origin-full",
        Acts("as `origin`; the other o= fields stay what the party first saw, always"),
    ),
    (
        "session-connection",
        Ignored("baton always points the session-level c= line at itself"),
    ),
    (
        "username",
        Ignored("baton always keeps the o= username a party first saw"),
    ),
    (
        "sdp-version",
        Ignored("baton always keeps the o= version and raises it only when the body changes"),
    ),
    (
        "session-name",
        Ignored("baton always keeps the s= line a party first saw"),
    ),
    (
        "zero-address",
        Refused("baton keeps a 0.0.0.0 address, which tells the receiver not to send"),
    ),
    (
        "force-increment-sdp-ver",
        Refused("baton raises the o= version only when the body changes (RFC 3264 §8)"),
    ),
];

/// Keys of the `codec` dictionary.
pub const CODEC_KEYS: &[Word] = &[
    ("strip", Acts("as `codec-strip-`")),
    ("mask", Acts("as `codec-mask-`")),
    ("offer", Acts("as `codec-offer-`")),
    ("except", Acts("as `codec-except-`")),
    ("transcode", Refused(NO_TRANSCODING)),
    ("accept", Refused(NO_TRANSCODING)),
    ("consume", Refused(NO_TRANSCODING)),
    ("set", Refused(NO_TRANSCODING)),
    ("ignore", Refused(NO_TRANSCODING)),
];

/// Every word of the tables above as a Markdown table (docs/kamailio.md
/// carries it; a test keeps the two the same).
pub fn markdown_table() -> String {
    let mut out = String::from("| word | kind | baton |\n|---|---|---|\n");
    let sections: [(&str, &[Word], &str); 5] = [
        ("key", KEYS, ""),
        ("flag", FLAGS, ""),
        ("flag family", FLAG_PREFIXES, "…"),
        ("`replace` value", REPLACE, ""),
        ("`codec` key", CODEC_KEYS, ""),
    ];
    for (kind, table, suffix) in sections {
        for (word, treatment) in table {
            let what = match treatment {
                Acts(what) => (*what).to_owned(),
                Ignored(why) => format!("ignored: {why}"),
                Refused(why) => format!("**refused**: {why}"),
            };
            out.push_str(&format!("| `{word}{suffix}` | {kind} | {what} |\n"));
        }
    }
    out
}

/// Most flags one request may carry.
pub const MAX_FLAGS: usize = 128;
/// Longest `rtpp-flags` string read.
pub const MAX_FLAG_STRING: usize = 8192;
/// Most tokens in an `rtpp-flags` string.
const MAX_FLAG_TOKENS: usize = 512;

/// One spelling for a word: lower case, words joined by `-` (rtpengine
/// reads `call id`, `call-id` and `call_id` alike).
pub fn normalize(word: &str) -> String {
    word.bytes()
        .map(|b| match b {
            b' ' | b'_' => '-',
            other => char::from(other.to_ascii_lowercase()),
        })
        .collect()
}

fn lookup(table: &[Word], word: &str) -> Option<Word> {
    table.iter().find(|(name, _)| *name == word).copied()
}

fn alias<'a>(aliases: &[(&str, &'a str)], word: &str) -> Option<&'a str> {
    aliases
        .iter()
        .find(|(from, _)| *from == word)
        .map(|(_, to)| *to)
}

/// How baton reads a top-level key: its canonical name and treatment.
pub fn key(word: &str) -> Option<(&'static str, Treatment)> {
    let word = normalize(word);
    let word = alias(KEY_ALIASES, &word).map_or(word, str::to_owned);
    lookup(KEYS, &word).or_else(|| {
        // Families rtpengine reads under several names.
        let refused = |reason| Some(("", Refused(reason)));
        if ["recording-", "output-", "vsc-"]
            .iter()
            .any(|prefix| word.starts_with(prefix))
        {
            refused(NO_RECORDING)
        } else if word.starts_with("dtmf-") || word.starts_with("trigger") {
            refused(NO_DTMF_HANDLING)
        } else if word.starts_with("t.38-") || word.starts_with("t38-") {
            refused(NO_T38)
        } else {
            None
        }
    })
}

/// How baton reads a flag: its canonical spelling and treatment. A flag
/// of a family keeps what follows its prefix as written (suite names,
/// codec names).
pub fn flag(word: &str) -> Option<(String, Treatment)> {
    let normal = normalize(word);
    let normal = alias(FLAG_ALIASES, &normal).map_or(normal, str::to_owned);
    if let Some((name, treatment)) = lookup(FLAGS, &normal) {
        return Some((name.to_owned(), treatment));
    }
    FLAG_PREFIXES.iter().find_map(|&(prefix, treatment)| {
        (normal.len() > prefix.len() && normal.starts_with(prefix))
            .then(|| (format!("{prefix}{}", &word[prefix.len()..]), treatment))
    })
}

fn refusal(what: &str, word: &str, reason: &str) -> String {
    format!(
        "{what} {} is not implemented by baton: {reason}",
        excerpt(word)
    )
}

/// The request with its keys and flags in their canonical spelling and
/// `rtpp-flags` read into it; an error names the first word baton does not
/// implement.
pub fn canonical(request: &Dict) -> Result<Dict, String> {
    let mut out = Dict::with_capacity(request.len());
    let mut flags: Vec<Value> = Vec::new();
    let merge = |out: &mut Dict, flags: &mut Vec<Value>, name: &str, value: Value| {
        if name == "flags" {
            match value {
                Value::List(items) => flags.extend(items),
                one @ (Value::Bytes(_) | Value::Int(_) | Value::Dict(_)) => flags.push(one),
            }
            return;
        }
        match (out.get_mut(name.as_bytes()), value) {
            (Some(Value::List(existing)), Value::List(more)) => existing.extend(more),
            (Some(Value::List(existing)), one @ Value::Bytes(_)) => existing.push(one),
            (Some(_), _) => {} // an explicit key wins over the flag string
            (None, value) => {
                out.insert(name.as_bytes().to_vec(), value);
            }
        }
    };
    let mut pairs: Vec<(String, Value)> = Vec::with_capacity(request.len());
    let mut flag_string = Vec::new();
    let mut spelled: Vec<(&'static str, String)> = Vec::new();
    for (raw, value) in request {
        let raw = String::from_utf8_lossy(raw).into_owned();
        let known = key(&raw);
        // One key in two spellings (`call-id` and `call id`): which one a
        // dictionary yields first is chance, so neither is taken.
        if let Some((name, _)) = known.filter(|(name, _)| !name.is_empty()) {
            if let Some((_, other)) = spelled.iter().find(|(n, _)| *n == name) {
                return Err(format!(
                    "ng key {} is given twice, as {} and {}",
                    name,
                    excerpt(other),
                    excerpt(&raw)
                ));
            }
            spelled.push((name, raw.clone()));
        }
        if known.is_some_and(|(name, _)| name == "rtpp-flags") {
            let Value::Bytes(bytes) = value else {
                return Err("rtpp-flags must be a string".to_owned());
            };
            let string =
                std::str::from_utf8(bytes).map_err(|_| "rtpp-flags is not UTF-8".to_owned())?;
            flag_string = parse_flag_string(string)?;
        } else {
            pairs.push((raw, value.clone()));
        }
    }
    let from_string = pairs.len();
    for (at, (raw, value)) in pairs.into_iter().chain(flag_string).enumerate() {
        let known = key(&raw);
        // The flag string is read after the keys and overrides them, as
        // rtpengine reads it (a `from-tag=` in it names the participant).
        if at >= from_string
            && let Some((name, Acts(_))) = known
            && (matches!(value, Value::Bytes(_) | Value::Int(_))
                || matches!(name, "received-from" | "direction"))
        {
            out.remove(name.as_bytes());
        }
        match known {
            Some((name, Acts(_))) => merge(&mut out, &mut flags, name, value),
            Some((_, Ignored(reason))) => debug!(key = %excerpt(&raw), reason, "ng: key ignored"),
            Some((_, Refused(reason))) => return Err(refusal("ng key", &raw, reason)),
            None => {
                return Err(format!(
                    "ng key {} is not implemented by baton (see the flag table in docs/kamailio.md)",
                    excerpt(&raw)
                ));
            }
        }
    }
    if flags.len() > MAX_FLAGS {
        return Err(format!("more than {MAX_FLAGS} flags"));
    }
    let mut kept = Vec::with_capacity(flags.len());
    for item in flags {
        let Value::Bytes(bytes) = item else {
            return Err("an entry of flags is not a string".to_owned());
        };
        let word = String::from_utf8_lossy(&bytes);
        match flag(&word) {
            Some((name, Acts(_))) => kept.push(text(name)),
            Some((_, Ignored(reason))) => {
                debug!(flag = %excerpt(&word), reason, "ng: flag ignored")
            }
            Some((_, Refused(reason))) => return Err(refusal("flag", &word, reason)),
            None => {
                return Err(format!(
                    "flag {} is not implemented by baton (see the flag table in docs/kamailio.md)",
                    excerpt(&word)
                ));
            }
        }
    }
    if !kept.is_empty() {
        out.insert(b"flags".to_vec(), Value::List(kept));
    }
    // Keys baton reads only in the one value it implements, on any command.
    for (name, allowed, why) in [
        (
            "record-call",
            &["yes", "on", "no", "off"][..],
            "give yes or no",
        ),
        (
            "delete-delay",
            &["0"][..],
            "baton ends a deleted call at once (delete-delay=0)",
        ),
    ] {
        let value = match out.get(name.as_bytes()) {
            Some(Value::Int(n)) => Some(n.to_string()),
            Some(Value::Bytes(b)) => Some(String::from_utf8_lossy(b).to_ascii_lowercase()),
            Some(Value::List(_) | Value::Dict(_)) => Some("a list".to_owned()),
            None => None,
        };
        if let Some(value) = value
            && !allowed.contains(&value.as_str())
        {
            return Err(format!(
                "{name}={} is not implemented by baton: {why}",
                excerpt(&value)
            ));
        }
    }
    Ok(out)
}

/// One token of a flag string: a word, or a bracketed list.
#[derive(Debug)]
enum Token<'a> {
    Word(&'a str),
    Open,
    Close,
}

fn tokens(string: &str) -> Result<Vec<Token<'_>>, String> {
    let mut out = Vec::new();
    for piece in string.split(' ').filter(|p| !p.is_empty()) {
        let mut rest = piece;
        // `key=[a` opens a list after its `=` (`codec=[strip=[a` two);
        // `b]` and `]]` close them.
        loop {
            while let Some(stripped) = rest.strip_prefix('[') {
                out.push(Token::Open);
                rest = stripped;
            }
            match rest.find("=[") {
                Some(at) => {
                    out.push(Token::Word(&rest[..=at]));
                    rest = &rest[at + 1..];
                }
                None => break,
            }
        }
        let closes = rest.len() - rest.trim_end_matches(']').len();
        rest = &rest[..rest.len() - closes];
        if !rest.is_empty() {
            out.push(Token::Word(rest));
        }
        out.extend(std::iter::repeat_with(|| Token::Close).take(closes));
        if out.len() > MAX_FLAG_TOKENS {
            return Err(format!("rtpp-flags has more than {MAX_FLAG_TOKENS} words"));
        }
    }
    Ok(out)
}

/// The items of a bracketed list, after its `[`: words, or `key=value`
/// pairs making a dictionary (`codec=[strip=[PCMA] offer=[PCMU]]`).
fn list(tokens: &[Token<'_>], at: &mut usize, depth: usize) -> Result<Value, String> {
    if depth > 4 {
        return Err("rtpp-flags nests lists deeper than 4 levels".to_owned());
    }
    let mut items = Vec::new();
    let mut pairs: Vec<(Vec<u8>, Value)> = Vec::new();
    loop {
        let Some(token) = tokens.get(*at) else {
            return Err("rtpp-flags has a [ without its ]".to_owned());
        };
        *at += 1;
        match token {
            Token::Close => break,
            Token::Open => items.push(list(tokens, at, depth + 1)?),
            Token::Word(word) => match word.split_once('=') {
                Some((k, "")) if matches!(tokens.get(*at), Some(Token::Open)) => {
                    *at += 1;
                    pairs.push((k.as_bytes().to_vec(), list(tokens, at, depth + 1)?));
                }
                Some((k, v)) => pairs.push((k.as_bytes().to_vec(), text(v))),
                None => items.push(text(*word)),
            },
        }
    }
    if pairs.is_empty() {
        Ok(Value::List(items))
    } else if items.is_empty() {
        Ok(Value::Dict(pairs.into_iter().collect()))
    } else {
        Err("rtpp-flags mixes words and key=value pairs in one list".to_owned())
    }
}

/// Transport words of a flag string and the protocol they add up to, as
/// Kamailio's module adds them.
fn transport_word(word: &str, bits: &mut u16) -> bool {
    match word {
        "RTP" => *bits = (*bits | 0x100) & !0x001,
        "AVP" => *bits = (*bits | 0x100) & !0x002,
        "SRTP" => *bits |= 0x101,
        "AVPF" => *bits |= 0x102,
        "DTLS" => *bits |= 0x104,
        "RTP/AVP" => *bits = 0x100,
        "RTP/SAVP" => *bits = 0x101,
        "RTP/AVPF" => *bits = 0x102,
        "RTP/SAVPF" => *bits = 0x103,
        "UDP/TLS/RTP/SAVP" => *bits = 0x104,
        "UDP/TLS/RTP/SAVPF" => *bits = 0x106,
        _ => return false,
    }
    true
}

/// Reads a flag string (`rtpp-flags`, or what a proxy's script passes) the
/// way Kamailio's rtpengine module turns one into ng keys: bare words are
/// flags, `key=value` are keys, and these families gather into lists:
/// `replace-…`, `SDES-…`, `T.38-…`, `rtcp-mux-…`, `codec-strip-…` (and
/// the other codec operations, into the `codec` dictionary), `direction=`
/// and `internal`/`external`, `received-from=`; transport words (`RTP`,
/// `SRTP`, `RTP/SAVPF`, …) set `transport-protocol`.
pub fn parse_flag_string(string: &str) -> Result<Vec<(String, Value)>, String> {
    if string.len() > MAX_FLAG_STRING {
        return Err(format!("rtpp-flags is longer than {MAX_FLAG_STRING} bytes"));
    }
    let tokens = tokens(string)?;
    let mut out: Vec<(String, Value)> = Vec::new();
    let mut lists: HashMap<&'static str, Vec<Value>> = HashMap::new();
    let mut codec: HashMap<Vec<u8>, Vec<Value>> = HashMap::new();
    let mut transport = 0u16;
    let mut at = 0;
    while let Some(token) = tokens.get(at) {
        at += 1;
        let word = match token {
            Token::Word(word) => *word,
            Token::Open | Token::Close => {
                return Err("rtpp-flags has a bracket outside a key=[…] list".to_owned());
            }
        };
        let (name, value) = match word.split_once('=') {
            Some((name, "")) if matches!(tokens.get(at), Some(Token::Open)) => {
                at += 1;
                (name, Some(list(&tokens, &mut at, 1)?))
            }
            Some((name, value)) => (name, Some(text(value))),
            None => (word, None),
        };
        if value.is_none() && transport_word(name, &mut transport) {
            continue;
        }
        let values = |value: Option<Value>, rest: Option<&str>| -> Vec<Value> {
            match (value, rest) {
                (Some(Value::List(items)), _) => items,
                (Some(one), _) => vec![one],
                (None, Some(rest)) => vec![text(rest)],
                (None, None) => Vec::new(),
            }
        };
        let family = |prefix: &str| -> Option<Option<&str>> {
            if name.eq_ignore_ascii_case(prefix) {
                return Some(None);
            }
            let tail = name.get(prefix.len()..)?;
            (name[..prefix.len()].eq_ignore_ascii_case(prefix) && tail.len() > 1)
                .then(|| tail.strip_prefix('-'))
                .flatten()
                .map(Some)
        };
        let mut gathered = false;
        for (prefix, list_key) in [
            ("replace", "replace"),
            ("SDES", "SDES"),
            ("T.38", "T.38"),
            ("T38", "T.38"),
            ("rtcp-mux", "rtcp-mux"),
        ] {
            if let Some(rest) = family(prefix) {
                if rest.is_none() && value.is_none() {
                    break; // a bare `SDES`: a flag like any other
                }
                lists
                    .entry(list_key)
                    .or_default()
                    .extend(values(value.clone(), rest));
                gathered = true;
                break;
            }
        }
        if gathered {
            continue;
        }
        let mut codec_op = None;
        for (prefix, op) in [
            ("codec-transcode", "transcode"),
            ("transcode", "transcode"),
            ("codec-strip", "strip"),
            ("codec-offer", "offer"),
            ("codec-mask", "mask"),
            ("codec-set", "set"),
            ("codec-except", "except"),
            ("codec-accept", "accept"),
            ("codec-consume", "consume"),
            ("codec-ignore", "ignore"),
        ] {
            if let Some(rest) = family(prefix)
                && (rest.is_some() || value.is_some())
            {
                codec_op = Some((op, values(value.clone(), rest)));
                break;
            }
        }
        if let Some((op, items)) = codec_op {
            codec
                .entry(op.as_bytes().to_vec())
                .or_default()
                .extend(items);
            continue;
        }
        match (name, value) {
            ("internal" | "external", None) => {
                lists.entry("direction").or_default().push(text(name));
            }
            ("direction", Some(value)) => lists.entry("direction").or_default().push(value),
            ("received-from", Some(Value::Bytes(address))) => {
                let address = String::from_utf8_lossy(&address).into_owned();
                let family = if address.contains(':') { "IP6" } else { "IP4" };
                out.push((
                    "received-from".to_owned(),
                    Value::List(vec![text(family), text(address)]),
                ));
            }
            ("codec", Some(Value::Dict(ops))) => {
                for (op, items) in ops {
                    codec
                        .entry(op)
                        .or_default()
                        .extend(values(Some(items), None));
                }
            }
            (name, Some(value)) => out.push((name.to_owned(), value)),
            (name, None) => out.push(("flags".to_owned(), Value::List(vec![text(name)]))),
        }
    }
    const TRANSPORTS: [&str; 8] = [
        "RTP/AVP",
        "RTP/SAVP",
        "RTP/AVPF",
        "RTP/SAVPF",
        "UDP/TLS/RTP/SAVP",
        "",
        "UDP/TLS/RTP/SAVPF",
        "",
    ];
    if transport & 0x100 != 0 {
        let name = TRANSPORTS[usize::from(transport & 0x007)];
        if name.is_empty() {
            return Err("rtpp-flags names no transport protocol baton knows".to_owned());
        }
        out.push(("transport-protocol".to_owned(), text(name)));
    }
    let mut gathered: Vec<_> = lists.into_iter().collect();
    gathered.sort_by_key(|(k, _)| *k);
    for (name, items) in gathered {
        out.push((name.to_owned(), Value::List(items)));
    }
    if !codec.is_empty() {
        let codec = codec
            .into_iter()
            .map(|(op, items)| (op, Value::List(items)))
            .collect();
        out.push(("codec".to_owned(), Value::Dict(codec)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ng::wire::{get_list, get_str};

    fn request(pairs: &[(&str, Value)]) -> Dict {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
            .collect()
    }

    fn words(list: &[&str]) -> Value {
        Value::List(list.iter().map(|w| text(*w)).collect())
    }

    #[test]
    fn spellings_rtpengine_reads_become_one() {
        let out = canonical(&request(&[
            ("call id", text("c")),
            ("From_Tag", text("f")),
            ("address family", text("IP6")),
            ("transport protocol", text("RTP/AVP")),
            ("ICE", text("remove")),
            ("SDES", words(&["no-AES_CM_128_HMAC_SHA1_32"])),
            ("media address", text("192.0.2.9")),
            (
                "flags",
                words(&[
                    "SIP source address",
                    "trust_address",
                    "SDES-no-AES_CM_128_HMAC_SHA1_80",
                    "codec-strip-PCMA",
                ]),
            ),
        ]))
        .expect("all implemented");
        assert_eq!(get_str(&out, "call-id"), Some("c"));
        assert_eq!(get_str(&out, "from-tag"), Some("f"));
        assert_eq!(get_str(&out, "address-family"), Some("IP6"));
        assert_eq!(get_str(&out, "transport-protocol"), Some("RTP/AVP"));
        assert_eq!(get_str(&out, "ice"), Some("remove"));
        assert_eq!(get_str(&out, "media-address"), Some("192.0.2.9"));
        assert_eq!(get_list(&out, "sdes"), ["no-AES_CM_128_HMAC_SHA1_32"]);
        assert_eq!(
            get_list(&out, "flags"),
            [
                "sip-source-address",
                "trust-address",
                // A family keeps what follows its prefix as written.
                "sdes-no-AES_CM_128_HMAC_SHA1_80",
                "codec-strip-PCMA",
            ]
        );
    }

    #[test]
    fn what_baton_does_not_do_is_refused_by_name_and_advisory_words_are_dropped() {
        for (pairs, named) in [
            (vec![("flags", words(&["siprec"]))], "siprec"),
            (vec![("flags", words(&["T.38-force"]))], "T.38-force"),
            (
                vec![("flags", words(&["transcode-G722"]))],
                "transcode-G722",
            ),
            (vec![("flags", words(&["no-such-flag"]))], "no-such-flag"),
            (vec![("interface", text("pub"))], "interface"),
            (vec![("T38", words(&["decode"]))], "T38"),
            (vec![("no such key", text("x"))], "no such key"),
            (vec![("recording-dir", text("/tmp"))], "recording-dir"),
        ] {
            let error = canonical(&request(&pairs)).expect_err(named);
            assert!(error.contains(&format!("\"{named}\"")), "{error}");
            assert!(error.contains("not implemented by baton"), "{error}");
        }
        let out = canonical(&request(&[
            ("via-branch", text("z9hG4bK1")),
            ("sip-message-type", text("sip_request")),
            ("flags", words(&["asymmetric-codecs", "port-latching"])),
        ]))
        .expect("advisory");
        assert!(!out.contains_key(b"via-branch".as_slice()));
        assert_eq!(get_list(&out, "flags"), ["port-latching"]);
    }

    #[test]
    fn a_flag_string_reads_as_kamailios_module_sends_it() {
        let parsed = parse_flag_string(
            "replace-origin replace-session-connection ICE=remove SDES-off RTP/AVP \
             codec-strip-PCMA codec=[offer=[PCMU opus/48000] except=[telephone-event]] \
             received-from=2001:db8::1 direction=internal internal port-latching \
             user=callee aor=sip:bob@example.com",
        )
        .expect("parses");
        let dict: Dict = parsed
            .into_iter()
            .fold(Dict::new(), |mut dict, (name, value)| {
                match (dict.get_mut(name.as_bytes()), value) {
                    (Some(Value::List(list)), Value::List(more)) => list.extend(more),
                    (_, value) => {
                        dict.insert(name.into_bytes(), value);
                    }
                }
                dict
            });
        assert_eq!(get_list(&dict, "replace"), ["origin", "session-connection"]);
        assert_eq!(get_str(&dict, "ICE"), Some("remove"));
        assert_eq!(get_list(&dict, "SDES"), ["off"]);
        assert_eq!(get_str(&dict, "transport-protocol"), Some("RTP/AVP"));
        assert_eq!(get_list(&dict, "received-from"), ["IP6", "2001:db8::1"]);
        assert_eq!(get_list(&dict, "direction"), ["internal", "internal"]);
        assert_eq!(get_list(&dict, "flags"), ["port-latching"]);
        assert_eq!(get_str(&dict, "user"), Some("callee"));
        let Some(Value::Dict(codec)) = dict.get(b"codec".as_slice()) else {
            panic!("{dict:?}");
        };
        let codec: Dict = codec.clone();
        assert_eq!(get_list(&codec, "strip"), ["PCMA"]);
        assert_eq!(get_list(&codec, "offer"), ["PCMU", "opus/48000"]);
        assert_eq!(get_list(&codec, "except"), ["telephone-event"]);
        for transport in [
            ("SRTP", "RTP/SAVP"),
            ("SRTP AVPF", "RTP/SAVPF"),
            ("DTLS AVPF", "UDP/TLS/RTP/SAVPF"),
        ] {
            let parsed = parse_flag_string(transport.0).expect("parses");
            assert_eq!(
                parsed,
                [("transport-protocol".to_owned(), text(transport.1))]
            );
        }
    }

    #[test]
    fn rtpp_flags_are_read_into_the_request_and_override_its_keys() {
        let out = canonical(&request(&[
            ("call-id", text("c")),
            ("flags", words(&["strict-source"])),
            ("ICE", text("force")),
            (
                "rtpp-flags",
                text("ICE=remove trust-address replace-origin codec-mask-PCMA loop-protect"),
            ),
        ]))
        .expect("implemented");
        // Read after the keys, as rtpengine reads it.
        assert_eq!(get_str(&out, "ice"), Some("remove"));
        let mut flags = get_list(&out, "flags");
        flags.sort();
        assert_eq!(flags, ["loop-protect", "strict-source", "trust-address"]);
        assert_eq!(get_list(&out, "replace"), ["origin"]);
        assert!(canonical(&request(&[("rtpp-flags", text("T.38=decode"))])).is_err());
        assert!(canonical(&request(&[("rtpp-flags", text("siprec"))])).is_err());
    }

    #[test]
    fn malformed_flag_strings_are_refused_not_guessed() {
        for bad in [
            "codec=[strip=[PCMA]",
            "]",
            "codec=[strip=[a [b]] x]",
            "x=[a b=c]",
            &"a ".repeat(MAX_FLAG_TOKENS + 1),
            &"x".repeat(MAX_FLAG_STRING + 1),
            &format!("{}x{}", "k=[".repeat(6), "]".repeat(6)),
        ] {
            assert!(parse_flag_string(bad).is_err(), "{bad}");
        }
        assert!(canonical(&request(&[("rtpp-flags", Value::Int(1))])).is_err());
        let many = Value::List(vec![text("fast"); MAX_FLAGS + 1]);
        assert!(canonical(&request(&[("flags", many)])).is_err());
        assert!(canonical(&request(&[("flags", Value::List(vec![Value::Int(1)]))])).is_err());
    }
}
