//! Issue 19, real-world SDP: every body of `tests/fixtures/sdp` (published
//! examples and products' bodies, listed with their sources in SOURCES.md)
//! goes through the relay as an ng offer, and its reply is compared with
//! it line by line: each line comes back in the same order, unchanged,
//! except the lines the relay must rewrite (c=, the m= port, a=rtcp) and
//! the ones that belong to the sender alone (ICE, keys, DTLS identity,
//! BUNDLE groups), which may go or be replaced by the relay's own.
//!
//! The bodies' addresses are moved to loopback first (127.0.0.1, ::1), so
//! nothing the relay does with them can reach another host.

mod common;

use baton_control::ng::wire::{get_str, text};
use common::ng::{Proxy, request, result};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sdp");

/// Bodies the relay refuses, with what the refusal must say.
const REFUSED: &[(&str, &str)] = &[
    // Its keys carry a master key identifier, which baton's SRTP does not
    // implement; each line says so.
    ("rfc4568-sdes.sdp", "(MKI) is not supported"),
];

/// The body with every address a packet could be sent to moved to
/// loopback: c= lines (a wildcard stays), a=rtcp and ICE candidates.
fn to_loopback(body: &str) -> String {
    let mut out = String::new();
    for line in body.split("\r\n").filter(|l| !l.is_empty()) {
        let moved = if let Some(rest) = line.strip_prefix("c=IN IP4 ") {
            if rest.starts_with("0.0.0.0") {
                line.to_owned()
            } else {
                "c=IN IP4 127.0.0.1".to_owned()
            }
        } else if line.starts_with("c=IN IP6 ") {
            "c=IN IP6 ::1".to_owned()
        } else if let Some(rest) = line.strip_prefix("a=rtcp:") {
            match rest.split_once(' ') {
                Some((port, address)) if !address.contains("0.0.0.0") => {
                    format!("a=rtcp:{port} IN IP4 127.0.0.1")
                }
                Some(_) | None => line.to_owned(),
            }
        } else if line.starts_with("a=candidate:") {
            let mut fields: Vec<String> = line.split(' ').map(str::to_owned).collect();
            if fields.len() > 4 {
                fields[4] = "127.0.0.1".to_owned();
            }
            if let Some(at) = fields.iter().position(|f| f == "raddr")
                && let Some(address) = fields.get_mut(at + 1)
            {
                *address = "127.0.0.1".to_owned();
            }
            fields.join(" ")
        } else {
            line.to_owned()
        };
        out.push_str(&moved);
        out.push_str("\r\n");
    }
    out
}

/// Lines that belong to the sender alone: the relay may leave them out or
/// write its own instead.
fn senders_own(line: &str) -> bool {
    const ATTRIBUTES: [&str; 14] = [
        "a=candidate:",
        "a=ice-ufrag:",
        "a=ice-pwd:",
        "a=ice-options:",
        "a=ice-pacing:",
        "a=end-of-candidates",
        "a=ice-lite",
        "a=crypto:",
        "a=fingerprint:",
        "a=setup:",
        "a=tls-id:",
        "a=group:BUNDLE",
        "a=bundle-only",
        "k=",
    ];
    ATTRIBUTES.iter().any(|a| line.starts_with(a))
        || (line.starts_with("a=extmap:") && line.contains("transport-wide-cc"))
        || (line.starts_with("a=rtcp-fb:") && line.ends_with("transport-cc"))
}

/// Lines the relay may add of its own.
fn relays_own(line: &str) -> bool {
    line.starts_with("c=")
        || line.starts_with("a=rtcp:")
        || line.starts_with("a=rtcp-mux")
        || line.starts_with("a=mid:")
        || senders_own(line)
}

/// Lines the relay rewrites in place, matched by this prefix.
fn rewritten_prefix(line: &str) -> Option<String> {
    if line.starts_with("c=") {
        Some("c=".to_owned())
    } else if line.starts_with("a=rtcp:") {
        Some("a=rtcp:".to_owned())
    } else if line.starts_with("a=mid:") {
        // Toward a WebRTC peer, the receiver's own MID.
        Some("a=mid:".to_owned())
    } else if let Some(rest) = line.strip_prefix("m=") {
        rest.split(' ').next().map(|kind| format!("m={kind} "))
    } else {
        None
    }
}

/// Compares one reply with its body; `Err` says which line went wrong.
fn compare(sent: &str, got: &str) -> Result<(), String> {
    let got: Vec<&str> = got.split("\r\n").filter(|l| !l.is_empty()).collect();
    let mut used = vec![false; got.len()];
    let mut at = 0;
    for line in sent.split("\r\n").filter(|l| !l.is_empty()) {
        if senders_own(line) {
            continue;
        }
        let found = match rewritten_prefix(line) {
            Some(prefix) => (at..got.len()).find(|&i| got[i].starts_with(&prefix)),
            None => (at..got.len()).find(|&i| got[i] == line),
        };
        let Some(i) = found else {
            return Err(format!("{line:?} is missing or out of order"));
        };
        if let (Some(sent_m), Some(got_m)) = (line.strip_prefix("m="), got[i].strip_prefix("m=")) {
            // Same type, transport and formats; the port is the relay's
            // (or 0 for a line it does not carry).
            let fields = |m: &str| -> Vec<String> {
                m.split(' ')
                    .enumerate()
                    .filter(|(n, _)| *n != 1)
                    .map(|(_, f)| f.to_owned())
                    .collect()
            };
            if fields(sent_m) != fields(got_m) {
                return Err(format!("{line:?} came back as {:?}", got[i]));
            }
        }
        used[i] = true;
        at = i + 1;
    }
    for (line, used) in got.iter().zip(used) {
        if !used && !relays_own(line) {
            return Err(format!("{line:?} was added"));
        }
    }
    Ok(())
}

#[test]
fn every_body_of_the_corpus_comes_back_line_by_line() {
    let port = common::free_udp_port();
    let ng = format!("udp:127.0.0.1:{port}");
    let _relay = common::Relay::start(&[
        "--media-ip",
        "127.0.0.1",
        "--media-ip",
        "::1",
        "--listen-ng",
        &ng,
    ]);
    let mut proxy = Proxy::new(format!("127.0.0.1:{port}").parse().expect("addr"));
    let mut files: Vec<_> = std::fs::read_dir(CORPUS)
        .expect("corpus")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|name| name.ends_with(".sdp"))
        .collect();
    files.sort();
    assert!(files.len() >= 40, "{} bodies", files.len());
    let sources = std::fs::read_to_string(format!("{CORPUS}/SOURCES.md")).expect("SOURCES.md");
    let mut failures = Vec::new();
    for name in &files {
        assert!(
            sources.contains(&format!("`{name}`")),
            "{name} has no source"
        );
        let body = std::fs::read_to_string(format!("{CORPUS}/{name}")).expect("body");
        let sent = to_loopback(&body);
        let reply = proxy.call(&request(vec![
            ("command", text("offer")),
            ("call-id", text(name.as_str())),
            ("from-tag", text("offerer")),
            ("sdp", text(sent.as_str())),
        ]));
        let refusal = REFUSED.iter().find(|(file, _)| file == name);
        match (result(&reply), refusal) {
            ("ok", None) => {
                let got = get_str(&reply, "sdp").expect("sdp");
                if let Err(why) = compare(&sent, got) {
                    failures.push(format!("{name}: {why}\n--- sent\n{sent}--- got\n{got}"));
                }
            }
            ("error", Some((_, says))) => {
                let why = get_str(&reply, "error-reason").unwrap_or_default();
                if !why.contains(says) {
                    failures.push(format!("{name}: refused with {why:?}, not {says:?}"));
                }
            }
            (outcome, _) => failures.push(format!("{name}: {outcome}: {reply:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_comparison_catches_what_it_is_for() {
    let sent = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                m=audio 4000 RTP/AVP 0 8\r\na=x-one\r\na=x-two\r\na=candidate:1 1 UDP 1 127.0.0.1 4000 typ host\r\n";
    let good = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n\
                m=audio 30000 RTP/AVP 0 8\r\na=x-one\r\na=x-two\r\n";
    assert_eq!(compare(sent, good), Ok(()));
    for bad in [
        good.replace("a=x-one\r\na=x-two", "a=x-two\r\na=x-one"),
        good.replace("a=x-two\r\n", ""),
        good.replace("RTP/AVP 0 8", "RTP/AVP 8 0"),
        good.replace("a=x-two\r\n", "a=x-two\r\na=x-three\r\n"),
    ] {
        assert!(compare(sent, &bad).is_err(), "{bad}");
    }
}
