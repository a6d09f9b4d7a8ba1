//! WebRTC legs through the real binary against aiortc (a WebRTC stack no
//! one here wrote; `tests/webrtc/peer.py`): ICE-lite, DTLS-SRTP and
//! rtcp-mux on the browser's side, plain RTP on the SIP side, set up over
//! ng as Kamailio's WebRTC configurations do. aiortc is a full ICE agent
//! (controlling) and checks the relay's candidate; its DTLS (OpenSSL)
//! checks the relay's fingerprint and the relay checks its own.
//!
//! Needs Python with aiortc (`pip install aiortc`); CI installs it and sets
//! BATON_REQUIRE_AIORTC so that these tests run there, never skip.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use baton_control::sip::sdp::Sdp;
use common::media::{Peer, rtp};
use common::ng::{Proxy, flags, reason, request, result, sdp_of, text};
use serde_json::Value as Json;

fn python() -> &'static str {
    "python3"
}

fn aiortc_present() -> bool {
    let present = Command::new(python())
        .args(["-c", "import aiortc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        assert!(
            std::env::var_os("BATON_REQUIRE_AIORTC").is_none(),
            "BATON_REQUIRE_AIORTC is set but python3 cannot import aiortc"
        );
        eprintln!("SKIPPED: python3 cannot import aiortc (pip install aiortc)");
    }
    present
}

/// The aiortc peer, driven over JSON lines.
struct WebRtcPeer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl WebRtcPeer {
    fn start(args: &[&str]) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webrtc/peer.py");
        let mut child = Command::new(python())
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the aiortc peer");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Self {
            child,
            stdin,
            stdout,
        }
    }

    fn read(&mut self, key: &str) -> Json {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("a line from the peer");
        let value: Json = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the peer printed {line:?}: {e}"));
        value
            .get(key)
            .cloned()
            .unwrap_or_else(|| panic!("no {key} in {value}"))
    }

    fn write(&mut self, key: &str, sdp: &str) {
        let line = serde_json::json!({ key: sdp }).to_string();
        writeln!(self.stdin, "{line}").expect("write to the peer");
        self.stdin.flush().expect("flush");
    }

    fn finish(mut self) -> Json {
        let result = self.read("result");
        let _ = common::wait_bounded(&mut self.child);
        result
    }
}

impl Drop for WebRtcPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A SIP phone's body: PCMU on `media`.
fn sip_body(media: SocketAddr) -> String {
    format!(
        "v=0\r\no=bob 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
        ip = media.ip(),
        port = media.port()
    )
}

fn attributes<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let prefix = format!("a={name}");
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

/// Sends payload type `pt` from the SIP phone to the relay every 20 ms
/// until stopped.
fn speak(
    phone: Arc<Peer>,
    pt: u8,
    to: SocketAddr,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut seq: u16 = 100;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            phone.send(
                &to.to_string(),
                &rtp(pt, seq, u32::from(seq) * 160, 0xB0B, &[0xFF; 160]),
            );
            seq = seq.wrapping_add(1);
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

/// RTP the SIP phone received within `wait`: (payload type, seq, ssrc).
fn heard(phone: &Peer, wait: Duration) -> Vec<(u8, u16, u32)> {
    let until = Instant::now() + wait;
    let mut got = Vec::new();
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        let Some((bytes, _)) = phone.recv_within(left.min(Duration::from_millis(200))) else {
            continue;
        };
        if bytes.len() >= 12 && bytes[0] >> 6 == 2 && !(200..=204).contains(&bytes[1]) {
            got.push((
                bytes[1] & 0x7f,
                u16::from_be_bytes([bytes[2], bytes[3]]),
                u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
            ));
        }
    }
    got
}

fn ng_offer(
    proxy: &mut Proxy,
    call_id: &str,
    sdp: &str,
    extra: Vec<(&str, serde_bencode::value::Value)>,
) -> common::ng::Dict {
    let mut offer = vec![
        ("command", text("offer")),
        ("call-id", text(call_id)),
        ("from-tag", text("a-tag")),
        ("sdp", text(sdp)),
        ("replace", flags(&["origin", "session-connection"])),
        ("received-from", flags(&["IP4", "127.0.0.1"])),
    ];
    offer.extend(extra);
    proxy.call(&request(offer))
}

#[test]
fn a_browser_calls_a_sip_phone_over_ice_lite_and_dtls_srtp() {
    if !aiortc_present() {
        return;
    }
    let (_relay, ng, _) = common::ng::relay_with_ng();
    let mut proxy = Proxy::new(ng);
    let mut browser = WebRtcPeer::start(&["offer", "--seconds", "4"]);
    let offer = browser.read("offer");
    let offer = offer.as_str().expect("an SDP string");

    // Kamailio's WebRTC → SIP flags: plain RTP, no ICE toward the phone.
    let to_phone = sdp_of(&ng_offer(
        &mut proxy,
        "webrtc-call-1",
        offer,
        vec![
            ("ICE", text("remove")),
            ("transport-protocol", text("RTP/AVP")),
        ],
    ));
    let phone_text = to_phone.render();
    let audio = to_phone.media(0).expect("audio");
    assert_eq!(audio.proto, "RTP/AVP", "{phone_text}");
    for browser_only in ["ice-", "candidate", "fingerprint", "setup", "group"] {
        assert!(
            attributes(&phone_text, browser_only).is_empty(),
            "a={browser_only} reached the SIP phone:\n{phone_text}"
        );
    }
    let phone = Arc::new(Peer::v4());
    let answer = proxy.call(&request(vec![
        ("command", text("answer")),
        ("call-id", text("webrtc-call-1")),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        ("sdp", text(sip_body(phone.addr()))),
    ]));
    let to_browser = sdp_of(&answer);
    let browser_text = to_browser.render();
    let media = to_browser.media(0).expect("audio");
    assert_eq!(media.proto, "UDP/TLS/RTP/SAVPF", "{browser_text}");
    assert_eq!(
        attributes(&browser_text, "ice-lite"),
        vec![""],
        "{browser_text}"
    );
    assert_eq!(attributes(&browser_text, "setup:"), vec!["passive"]);
    assert_eq!(attributes(&browser_text, "mid:"), vec!["0"]);
    assert_eq!(attributes(&browser_text, "group:"), vec!["BUNDLE 0"]);
    assert!(media.rtcp_mux);
    let candidate = attributes(&browser_text, "candidate:");
    assert_eq!(candidate.len(), 1, "{browser_text}");
    assert!(candidate[0].contains("127.0.0.1") && candidate[0].ends_with("typ host"));
    browser.write("answer", &browser_text);

    let stop = Arc::new(AtomicBool::new(false));
    let speaker = speak(
        Arc::clone(&phone),
        0,
        common::ng::media_addr(&to_phone),
        Arc::clone(&stop),
    );
    let from_browser = heard(&phone, Duration::from_secs(4));
    let result = browser.finish();
    stop.store(true, Ordering::Relaxed);
    let _ = speaker.join();

    assert_eq!(result["ice"], "completed", "{result}");
    assert_eq!(result["connection"], "connected", "{result}");
    assert!(
        !result["connection_states"]
            .as_array()
            .expect("states")
            .iter()
            .any(|s| s == "failed"),
        "{result}"
    );
    // The phone spoke for about 4 s at 50 packets/s; the browser decrypted
    // and decoded what it got.
    let received = result["packets_received"].as_u64().expect("a count");
    assert!(
        received >= 50,
        "the browser received {received} packets: {result}"
    );
    assert!(
        result["frames_decoded"].as_u64().expect("a count") >= 50,
        "{result}"
    );
    // And the phone heard the browser: plain PCMU, one stream, in order.
    assert!(
        from_browser.len() >= 50,
        "the phone heard {} packets",
        from_browser.len()
    );
    assert!(
        from_browser.iter().all(|(pt, _, _)| *pt == 0),
        "{from_browser:?}"
    );
    let ssrc = from_browser[0].2;
    assert!(from_browser.iter().all(|(_, _, s)| *s == ssrc));
    for pair in from_browser.windows(2) {
        assert_eq!(pair[1].1, pair[0].1.wrapping_add(1), "sequence continues");
    }
}

#[test]
fn a_browser_whose_certificate_does_not_match_its_fingerprint_gets_no_media() {
    if !aiortc_present() {
        return;
    }
    let (relay, ng, _) = common::ng::relay_with_ng();
    let mut proxy = Proxy::new(ng);
    let mut browser = WebRtcPeer::start(&["offer", "--seconds", "3", "--bad-fingerprint"]);
    let offer = browser.read("offer");
    let to_phone = sdp_of(&ng_offer(
        &mut proxy,
        "webrtc-call-2",
        offer.as_str().expect("sdp"),
        vec![("transport-protocol", text("RTP/AVP"))],
    ));
    let phone = Arc::new(Peer::v4());
    let answer = proxy.call(&request(vec![
        ("command", text("answer")),
        ("call-id", text("webrtc-call-2")),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        ("sdp", text(sip_body(phone.addr()))),
    ]));
    browser.write("answer", &sdp_of(&answer).render());
    let stop = Arc::new(AtomicBool::new(false));
    let speaker = speak(
        Arc::clone(&phone),
        0,
        common::ng::media_addr(&to_phone),
        Arc::clone(&stop),
    );
    let from_browser = heard(&phone, Duration::from_secs(3));
    let result = browser.finish();
    stop.store(true, Ordering::Relaxed);
    let _ = speaker.join();
    // ICE works (the credentials are right), the handshake does not.
    assert_ne!(result["connection"], "connected", "{result}");
    assert_eq!(result["packets_received"], 0, "{result}");
    assert!(from_browser.is_empty(), "{from_browser:?}");
    let log = relay.stderr();
    assert!(
        log.contains("does not match its a=fingerprint"),
        "the relay says why:\n{log}"
    );
}

#[test]
fn webrtc_flags_the_relay_cannot_honour_are_refused_by_name() {
    let (_relay, ng, _) = common::ng::relay_with_ng();
    let mut proxy = Proxy::new(ng);
    let phone = Peer::v4();
    let body = sip_body(phone.addr());
    let reply = ng_offer(
        &mut proxy,
        "refused-mux",
        &body,
        vec![("rtcp-mux", flags(&["reject"]))],
    );
    assert!(reason(&reply).contains("rtcp-mux-\"reject\""), "{reply:?}");
    for (key, value) in [("ICE", "force-relay"), ("DTLS", "fingerprint")] {
        let reply = ng_offer(
            &mut proxy,
            &format!("refused-{key}"),
            &body,
            vec![(key, text(value))],
        );
        let why = reason(&reply);
        assert!(
            why.contains(&format!("{key}=")) && why.contains(value),
            "{why}"
        );
    }
    let reply = ng_offer(
        &mut proxy,
        "refused-remove",
        &body,
        vec![
            ("ICE", text("remove")),
            ("transport-protocol", text("UDP/TLS/RTP/SAVPF")),
        ],
    );
    assert!(reason(&reply).contains("ICE=remove"));
    // ICE=force toward a WebRTC recipient: an offer with the relay's
    // ICE-lite credentials, candidate, fingerprint and actpass.
    let reply = ng_offer(
        &mut proxy,
        "sip-to-browser",
        &body,
        vec![
            ("ICE", text("force")),
            ("transport-protocol", text("UDP/TLS/RTP/SAVPF")),
        ],
    );
    assert_eq!(result(&reply), "ok", "{reply:?}");
    let to_browser: Sdp = sdp_of(&reply);
    let text = to_browser.render();
    assert_eq!(
        to_browser.media(0).expect("audio").proto,
        "UDP/TLS/RTP/SAVPF"
    );
    assert_eq!(attributes(&text, "setup:"), vec!["actpass"], "{text}");
    assert_eq!(attributes(&text, "ice-ufrag:").len(), 1);
    assert_eq!(attributes(&text, "fingerprint:sha-256 ").len(), 1);
    assert!(attributes(&text, "rtcp-mux").len() == 1);
}

const AOR: &str = "sip:alice@example.com";
const GRUU_A: &str = "sip:alice@example.com;gr=urn:uuid:00000000-0000-4000-8000-0000000000a1";
const GRUU_B: &str = "sip:alice@example.com;gr=urn:uuid:00000000-0000-4000-8000-0000000000b2";

/// A desk phone's body: PCMA on `media`.
fn phone_body(origin: &str, media: SocketAddr) -> String {
    format!(
        "v=0\r\no={origin} 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n",
        ip = media.ip(),
        port = media.port()
    )
}

/// The handoff a proxy asks for when the user's other device sends an
/// INVITE with Replaces (GRUU B replacing the dialog of GRUU A).
fn handoff_offer(call_id: &str, sdp: &str) -> serde_bencode::value::Value {
    request(vec![
        ("command", text("offer")),
        ("call-id", text(call_id)),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        ("sdp", text(sdp)),
        ("aor", text(AOR)),
        ("gruu", text(GRUU_B)),
        ("replaces", text(call_id)),
        ("new-call-id", text(format!("{call_id}-b"))),
        ("new-from-tag", text("b-tag")),
        ("received-from", flags(&["IP4", "127.0.0.1"])),
        ("flags", flags(&["baton-handoff"])),
    ])
}

/// bob's answer replayed by the proxy; the reply is the new device's
/// answer.
fn bob_answers(proxy: &mut Proxy, call_id: &str, bob: &Peer) -> Sdp {
    sdp_of(&proxy.call(&request(vec![
        ("command", text("answer")),
        ("call-id", text(call_id)),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        ("sdp", text(phone_body("bob", bob.addr()))),
    ])))
}

/// One RTP packet as bob heard it: payload type, sequence number,
/// timestamp, SSRC, first payload byte.
type Heard = (u8, u16, u32, u32, u8);

/// A browser (aiortc, talking for `seconds`) calls bob over ng as the user
/// (AOR, GRUU A), bridged to plain RTP; returns it and where bob sends.
fn browser_calls_bob(
    proxy: &mut Proxy,
    call_id: &str,
    bob: &Peer,
    seconds: &str,
) -> (WebRtcPeer, SocketAddr) {
    let mut browser = WebRtcPeer::start(&["offer", "--seconds", seconds]);
    let offer = browser.read("offer");
    let to_bob = sdp_of(&ng_offer(
        proxy,
        call_id,
        offer.as_str().expect("sdp"),
        vec![
            ("aor", text(AOR)),
            ("gruu", text(GRUU_A)),
            ("ICE", text("remove")),
            ("transport-protocol", text("RTP/AVP")),
        ],
    ));
    browser.write("answer", &bob_answers(proxy, call_id, bob).render());
    (browser, common::ng::media_addr(&to_bob))
}

/// What the remote heard is one stream: one SSRC, sequence numbers that
/// never skip or repeat, timestamps that never go back.
fn assert_one_stream(heard: &[Heard]) {
    let ssrc = heard[0].3;
    for pair in heard.windows(2) {
        let ((_, seq0, ts0, s0, _), (_, seq1, ts1, s1, _)) = (pair[0], pair[1]);
        assert_eq!((s0, s1), (ssrc, ssrc), "one SSRC");
        assert_eq!(seq1, seq0.wrapping_add(1), "sequence continues: {pair:?}");
        assert!(
            ts1.wrapping_sub(ts0) < 0x8000_0000,
            "timestamps go forward: {pair:?}"
        );
    }
}

/// RTP bob received until `until`: (payload type, seq, timestamp, SSRC,
/// first payload byte).
fn record(bob: Arc<Peer>, until: Instant) -> std::thread::JoinHandle<Vec<Heard>> {
    std::thread::spawn(move || {
        let mut got = Vec::new();
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            let Some((b, _)) = bob.recv_within(left.min(Duration::from_millis(100))) else {
                continue;
            };
            if b.len() > 12 && b[0] >> 6 == 2 && !(200..=204).contains(&b[1]) {
                got.push((
                    b[1] & 0x7f,
                    u16::from_be_bytes([b[2], b[3]]),
                    u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                    u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
                    b[12],
                ));
            }
        }
        got
    })
}

#[test]
fn a_call_moves_from_a_desk_phone_to_a_browser_and_the_remote_hears_one_stream() {
    if !aiortc_present() {
        return;
    }
    let (_relay, ng, _) = common::ng::relay_with_ng();
    let mut proxy = Proxy::new(ng);
    let (desk, bob) = (Arc::new(Peer::v4()), Arc::new(Peer::v4()));
    let call_id = "desk-to-browser";
    let to_bob = sdp_of(&ng_offer(
        &mut proxy,
        call_id,
        &phone_body("alice-desk", desk.addr()),
        vec![("aor", text(AOR)), ("gruu", text(GRUU_A))],
    ));
    let bob_to_relay = common::ng::media_addr(&to_bob);
    let to_desk = bob_answers(&mut proxy, call_id, &bob);
    let desk_to_relay = common::ng::media_addr(&to_desk);
    let heard = record(Arc::clone(&bob), Instant::now() + Duration::from_secs(8));
    // The desk phone talks for a while.
    for seq in 0..25u16 {
        desk.send(
            &desk_to_relay.to_string(),
            &rtp(
                8,
                1000 + seq,
                8000 + u32::from(seq) * 160,
                0xDE5C,
                &[0xD5; 160],
            ),
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The browser takes the call: its INVITE with Replaces.
    let mut browser = WebRtcPeer::start(&["offer", "--seconds", "4"]);
    let offer = browser.read("offer");
    let reoffer = sdp_of(&proxy.call(&handoff_offer(call_id, offer.as_str().expect("sdp"))));
    assert_eq!(
        common::ng::media_addr(&reoffer),
        bob_to_relay,
        "bob's leg stays"
    );
    let to_browser = bob_answers(&mut proxy, call_id, &bob);
    let text = to_browser.render();
    assert_eq!(
        to_browser.media(0).expect("audio").proto,
        "UDP/TLS/RTP/SAVPF",
        "{text}"
    );
    assert_eq!(attributes(&text, "ice-lite"), vec![""], "{text}");
    assert_eq!(attributes(&text, "setup:"), vec!["passive"], "{text}");
    assert_eq!(attributes(&text, "mid:"), vec!["0"], "{text}");
    assert_eq!(attributes(&text, "candidate:").len(), 1, "{text}");
    browser.write("answer", &text);
    // bob keeps talking; the desk phone goes on until the switch (its
    // packets after it are dropped).
    let stop = Arc::new(AtomicBool::new(false));
    let bob_speaks = speak(Arc::clone(&bob), 8, bob_to_relay, Arc::clone(&stop));
    let result = browser.finish();
    stop.store(true, Ordering::Relaxed);
    let _ = bob_speaks.join();
    let heard = heard.join().expect("recorder");

    assert_eq!(result["connection"], "connected", "{result}");
    assert!(
        result["packets_received"].as_u64().expect("count") >= 50,
        "{result}"
    );
    let from_desk = heard.iter().filter(|p| p.0 == 8).count();
    assert!(from_desk >= 25, "bob heard the desk phone: {heard:?}");
    // The browser's PCMA follows the desk phone's in the same stream.
    assert!(heard.len() >= 25 + 50, "bob heard {} packets", heard.len());
    assert!(heard.iter().all(|p| p.0 == 8), "PCMA throughout: {heard:?}");
    assert_one_stream(&heard);
}

#[test]
fn a_call_moves_from_a_browser_to_a_desk_phone_and_the_remote_hears_one_stream() {
    if !aiortc_present() {
        return;
    }
    let (_relay, ng, _) = common::ng::relay_with_ng();
    let mut proxy = Proxy::new(ng);
    let bob = Arc::new(Peer::v4());
    let call_id = "browser-to-desk";
    let (browser, bob_to_relay) = browser_calls_bob(&mut proxy, call_id, &bob, "5");
    let heard = record(Arc::clone(&bob), Instant::now() + Duration::from_secs(6));
    let stop = Arc::new(AtomicBool::new(false));
    let bob_speaks = speak(Arc::clone(&bob), 8, bob_to_relay, Arc::clone(&stop));
    // The browser talks for a while, then the desk phone takes the call.
    std::thread::sleep(Duration::from_secs(2));
    let desk = Peer::v4();
    let reoffer = sdp_of(&proxy.call(&handoff_offer(
        call_id,
        &phone_body("alice-desk", desk.addr()),
    )));
    assert_eq!(common::ng::media_addr(&reoffer), bob_to_relay);
    let to_desk = bob_answers(&mut proxy, call_id, &bob);
    let desk_to_relay = common::ng::media_addr(&to_desk);
    assert_eq!(to_desk.media(0).expect("audio").proto, "RTP/AVP");
    for seq in 0..50u16 {
        desk.send(
            &desk_to_relay.to_string(),
            &rtp(
                8,
                30_000 + seq,
                9_000_000 + u32::from(seq) * 160,
                0xDE5C,
                &[0x11; 160],
            ),
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // bob's media now reaches the desk phone.
    assert!(
        desk.recv_within(Duration::from_secs(2)).is_some(),
        "the desk phone hears bob"
    );
    let result = browser.finish();
    stop.store(true, Ordering::Relaxed);
    let _ = bob_speaks.join();
    let heard = heard.join().expect("recorder");
    assert_eq!(result["connection"], "connected", "{result}");
    // The desk phone's payload is 0x11…; aiortc's silence is not.
    let from_browser = heard.iter().take_while(|p| p.4 != 0x11).count();
    assert!(
        from_browser >= 50,
        "bob heard {from_browser} packets from the browser"
    );
    assert!(
        heard.len() >= from_browser + 45,
        "and then the desk phone: {}",
        heard.len()
    );
    assert!(heard.iter().all(|p| p.0 == 8), "PCMA throughout");
    assert_one_stream(&heard);
}

/// A call whose callee is a SIP phone doing ICE (`ICE=force` on RTP/AVP),
/// set up over ng: the relay's credentials and addresses.
struct ForcedIce {
    /// The relay's offer to the phone, as text.
    offer: String,
    /// USERNAME of the phone's checks (relay ufrag : phone ufrag).
    username: String,
    /// The relay's ICE password toward the phone.
    pwd: String,
    /// Where the phone checks and sends.
    relay_port: SocketAddr,
    /// Where the caller sends.
    caller_to_relay: SocketAddr,
}

fn forced_ice_call(proxy: &mut Proxy, call_id: &str, caller: &Peer, phone: &Peer) -> ForcedIce {
    let to_phone = sdp_of(&ng_offer(
        proxy,
        call_id,
        &phone_body("caller", caller.addr()),
        vec![
            ("ICE", text("force")),
            ("transport-protocol", text("RTP/AVP")),
        ],
    ));
    let offer = to_phone.render();
    let username = format!("{}:ph0n", attributes(&offer, "ice-ufrag:")[0]);
    let pwd = attributes(&offer, "ice-pwd:")[0].to_owned();
    let to_caller = sdp_of(&proxy.call(&request(vec![
        ("command", text("answer")),
        ("call-id", text(call_id)),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        (
            "sdp",
            text(format!(
                "{}a=ice-ufrag:ph0n\r\na=ice-pwd:phonepasswordphonepassword\r\na=rtcp-mux\r\n",
                phone_body("phone", phone.addr())
            )),
        ),
    ])));
    ForcedIce {
        offer,
        username,
        pwd,
        relay_port: common::ng::media_addr(&to_phone),
        caller_to_relay: common::ng::media_addr(&to_caller),
    }
}

/// A check as an ICE agent (stun-rs) writes it.
fn stun_check(username: &str, pwd: &str, nominate: bool) -> Vec<u8> {
    use stun_rs::attributes::ice::{IceControlling, Priority, UseCandidate};
    use stun_rs::attributes::stun::{Fingerprint, MessageIntegrity, UserName};
    use stun_rs::{HMACKey, MessageClass, MessageEncoderBuilder, StunMessageBuilder};
    let mut builder = StunMessageBuilder::new(stun_rs::methods::BINDING, MessageClass::Request)
        .with_attribute(UserName::new(username).expect("username"))
        .with_attribute(IceControlling::from(42u64))
        .with_attribute(Priority::from(2_130_706_431u32));
    if nominate {
        builder = builder.with_attribute(UseCandidate::default());
    }
    let message = builder
        .with_attribute(MessageIntegrity::new(
            HMACKey::new_short_term(pwd).expect("key"),
        ))
        .with_attribute(Fingerprint::default())
        .build();
    let mut buf = vec![0; 512];
    let len = MessageEncoderBuilder::default()
        .build()
        .encode(&mut buf, &message)
        .expect("encode");
    buf.truncate(len);
    buf
}

/// The mapped address of a success response authenticated with `pwd`.
fn mapped_address(response: &[u8], pwd: &str) -> SocketAddr {
    use stun_rs::attributes::stun::XorMappedAddress;
    use stun_rs::{DecoderContextBuilder, HMACKey, MessageClass, MessageDecoderBuilder};
    let context = DecoderContextBuilder::default()
        .with_key(HMACKey::new_short_term(pwd).expect("key"))
        .with_validation()
        .build();
    let (message, _) = MessageDecoderBuilder::default()
        .with_context(context)
        .build()
        .decode(response)
        .expect("a valid, authenticated response");
    assert_eq!(message.class(), MessageClass::SuccessResponse);
    *message
        .get::<XorMappedAddress>()
        .expect("XOR-MAPPED-ADDRESS")
        .as_xor_mapped_address()
        .expect("an address")
        .socket_address()
}

/// `ICE=force` toward a SIP phone that does ICE: the relay is its ICE-lite
/// peer. Only checks with the relay's credentials are answered; a
/// nominated one selects the phone's address; a stranger's STUN and media
/// are dropped, counted, and move nothing.
#[test]
fn ice_toward_a_sip_phone_selects_only_what_the_credentials_nominate() {
    let (relay, ng, _) = common::ng::relay_with_ng();
    let mut proxy = Proxy::new(ng);
    let (caller, phone, stranger) = (Peer::v4(), Peer::v4(), Peer::v4());
    let ForcedIce {
        offer: offer_text,
        username,
        pwd,
        relay_port,
        caller_to_relay,
    } = forced_ice_call(&mut proxy, "ice-forced", &caller, &phone);
    assert_eq!(
        attributes(&offer_text, "ice-lite"),
        vec![""],
        "{offer_text}"
    );
    // Before any check, the caller's media goes nowhere (not even to the
    // address in the phone's SDP).
    caller.send(
        &caller_to_relay.to_string(),
        &rtp(8, 1, 160, 0xCA, &[1; 160]),
    );
    assert!(phone.recv_within(Duration::from_millis(300)).is_none());
    // A stranger without the password: no answer, and nothing moves.
    stranger.send(
        &relay_port.to_string(),
        &stun_check(&username, "guessedpasswordguessedpw", true),
    );
    assert!(stranger.recv_within(Duration::from_millis(300)).is_none());
    // The phone's nominated check is answered and selects it.
    phone.send(&relay_port.to_string(), &stun_check(&username, &pwd, true));
    let (response, from) = phone
        .recv_within(Duration::from_secs(2))
        .expect("a response");
    assert_eq!(from, relay_port);
    assert_eq!(mapped_address(&response, &pwd), phone.addr());
    caller.send(
        &caller_to_relay.to_string(),
        &rtp(8, 2, 320, 0xCA, &[2; 160]),
    );
    let (media, _) = phone
        .recv_within(Duration::from_secs(2))
        .expect("media to the phone");
    assert_eq!(media[12], 2);
    // The stranger's media and its valid-looking but unauthenticated
    // nomination change nothing.
    stranger.send(&relay_port.to_string(), &rtp(8, 3, 480, 0x5, &[9; 160]));
    stranger.send(
        &relay_port.to_string(),
        &stun_check(&username, "guessedpasswordguessedpw", true),
    );
    caller.send(
        &caller_to_relay.to_string(),
        &rtp(8, 3, 480, 0xCA, &[3; 160]),
    );
    assert_eq!(
        phone.recv_within(Duration::from_secs(2)).expect("media").0[12],
        3
    );
    assert!(
        caller.recv_within(Duration::from_millis(300)).is_none(),
        "the stranger's media is not relayed"
    );
    let report =
        common::stdout_json(&relay.ctl(&["get", "--call-id", "ice-forced", "--from-tag", "a-tag"]));
    let drops = &report["session"]["streams"][0]["remote"]["stats"]["drops"];
    let count = |reason: &str| {
        drops[reason]
            .as_str()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(count("stun_unauthenticated"), 2, "{report}");
    assert!(count("ice_unchecked") >= 1, "{report}");
    assert_eq!(
        report["session"]["streams"][0]["remote"]["peer_source"], "ice",
        "{report}"
    );
}

#[test]
fn a_call_moves_from_one_browser_to_another() {
    if !aiortc_present() {
        return;
    }
    let (_relay, ng, _) = common::ng::relay_with_ng();
    let mut proxy = Proxy::new(ng);
    let bob = Arc::new(Peer::v4());
    let call_id = "browser-to-browser";
    let (first, bob_to_relay) = browser_calls_bob(&mut proxy, call_id, &bob, "6");
    let heard = record(Arc::clone(&bob), Instant::now() + Duration::from_secs(7));
    let stop = Arc::new(AtomicBool::new(false));
    let bob_speaks = speak(Arc::clone(&bob), 8, bob_to_relay, Arc::clone(&stop));
    std::thread::sleep(Duration::from_secs(2));
    // The second browser takes the call.
    let mut second = WebRtcPeer::start(&["offer", "--seconds", "3"]);
    let offer = second.read("offer");
    let _ = sdp_of(&proxy.call(&handoff_offer(call_id, offer.as_str().expect("sdp"))));
    let to_second = bob_answers(&mut proxy, call_id, &bob);
    assert_eq!(
        to_second.media(0).expect("audio").proto,
        "UDP/TLS/RTP/SAVPF"
    );
    second.write("answer", &to_second.render());
    let second_result = second.finish();
    let first_result = first.finish();
    stop.store(true, Ordering::Relaxed);
    let _ = bob_speaks.join();
    let heard = heard.join().expect("recorder");
    assert_eq!(first_result["connection"], "connected", "{first_result}");
    assert_eq!(second_result["connection"], "connected", "{second_result}");
    assert!(
        second_result["packets_received"].as_u64().expect("count") >= 50,
        "the second browser hears bob: {second_result}"
    );
    assert!(heard.len() >= 250, "bob heard {} packets", heard.len());
    assert_one_stream(&heard);
}

/// The remote party is the browser (a SIP phone calls a WebRTC user over
/// `ICE=force UDP/TLS/RTP/SAVPF`), and the caller moves the call between
/// two desk phones: the browser's SRTP stream from the relay goes on under
/// one SSRC with indexes it accepts (it keeps decoding after the switch).
#[test]
fn a_remote_browser_hears_one_stream_across_the_callers_handoff() {
    if !aiortc_present() {
        return;
    }
    let (_relay, ng, _) = common::ng::relay_with_ng();
    let mut proxy = Proxy::new(ng);
    let (desk_a, desk_b) = (Peer::v4(), Peer::v4());
    let call_id = "to-a-browser";
    let to_browser = sdp_of(&ng_offer(
        &mut proxy,
        call_id,
        &phone_body("desk-a", desk_a.addr()),
        vec![
            ("aor", text(AOR)),
            ("gruu", text(GRUU_A)),
            ("ICE", text("force")),
            ("transport-protocol", text("UDP/TLS/RTP/SAVPF")),
        ],
    ));
    let mut browser = WebRtcPeer::start(&["answer", "--seconds", "5"]);
    browser.write("offer", &to_browser.render());
    let answer = browser.read("answer");
    let to_desk_a = sdp_of(&proxy.call(&request(vec![
        ("command", text("answer")),
        ("call-id", text(call_id)),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        ("sdp", text(answer.as_str().expect("sdp"))),
    ])));
    let a_to_relay = common::ng::media_addr(&to_desk_a);
    for seq in 0..100u16 {
        desk_a.send(
            &a_to_relay.to_string(),
            &rtp(8, 500 + seq, 8000 + u32::from(seq) * 160, 0xA, &[0xD5; 160]),
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Desk phone B takes the call; the proxy replays the browser's answer.
    let reoffer = sdp_of(&proxy.call(&handoff_offer(
        call_id,
        &phone_body("desk-b", desk_b.addr()),
    )));
    assert_eq!(reoffer.media(0).expect("audio").proto, "UDP/TLS/RTP/SAVPF");
    let to_desk_b = sdp_of(&proxy.call(&request(vec![
        ("command", text("answer")),
        ("call-id", text(call_id)),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        ("sdp", text(answer.as_str().expect("sdp"))),
    ])));
    let b_to_relay = common::ng::media_addr(&to_desk_b);
    for seq in 0..100u16 {
        desk_b.send(
            &b_to_relay.to_string(),
            &rtp(
                8,
                40_000 + seq,
                999_000 + u32::from(seq) * 160,
                0xB,
                &[0xD5; 160],
            ),
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let result = browser.finish();
    assert_eq!(result["connection"], "connected", "{result}");
    // Both phones' packets reached the browser and decrypted: one SSRC.
    let received = result["packets_received"].as_u64().expect("count");
    assert!(received >= 180, "the browser received {received}: {result}");
    assert_eq!(
        result["ssrcs_received"].as_array().map(Vec::len),
        Some(1),
        "{result}"
    );
}

/// RFC 7675 end to end: a peer that stops checking loses consent after
/// 30 s — a `webrtc_leg` event says so and nothing more is sent to it —
/// and its next check brings the media back.
#[test]
fn a_peer_that_stops_checking_loses_consent_after_30_seconds_and_gets_it_back() {
    let (relay, ng, _) = common::ng::relay_with_ng();
    let mut proxy = Proxy::new(ng);
    let (caller, phone) = (Peer::v4(), Peer::v4());
    let call = forced_ice_call(&mut proxy, "consent", &caller, &phone);
    let (username, pwd, relay_port) = (call.username, call.pwd, call.relay_port);
    let caller_to_relay = call.caller_to_relay.to_string();
    let mut events = Command::new(common::baton_bin())
        .args(["ctl", "--control"])
        .arg(relay.unix_addr().to_string())
        .arg("events")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("baton ctl events");
    let lines = BufReader::new(events.stdout.take().expect("stdout"));
    let (seen, expired) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.lines().map_while(Result::ok) {
            if line.contains("consent_expired") {
                let _ = seen.send(line);
                return;
            }
        }
    });
    phone.send(&relay_port.to_string(), &stun_check(&username, &pwd, true));
    assert!(
        phone.recv_within(Duration::from_secs(2)).is_some(),
        "answered"
    );
    let mut seq = 0u16;
    let mut say = |caller: &Peer| {
        seq += 1;
        caller.send(
            &caller_to_relay,
            &rtp(8, seq, u32::from(seq) * 160, 0xCA, &[7; 160]),
        );
    };
    say(&caller);
    assert!(
        phone.recv_within(Duration::from_secs(2)).is_some(),
        "media flows"
    );
    // The phone goes quiet (no checks); the caller keeps talking.
    let started = Instant::now();
    let line = loop {
        say(&caller);
        while phone.recv_within(Duration::from_millis(1)).is_some() {}
        if let Ok(line) = expired.recv_timeout(Duration::from_millis(500)) {
            break line;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "no consent_expired event"
        );
    };
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(29),
        "consent lasts 30 s, it ended after {waited:?}: {line}"
    );
    while phone.recv_within(Duration::from_millis(100)).is_some() {}
    say(&caller);
    assert!(
        phone.recv_within(Duration::from_millis(500)).is_none(),
        "nothing is sent without consent"
    );
    // A new check restores it.
    phone.send(&relay_port.to_string(), &stun_check(&username, &pwd, false));
    assert!(
        phone.recv_within(Duration::from_secs(2)).is_some(),
        "answered"
    );
    say(&caller);
    let (media, _) = phone
        .recv_within(Duration::from_secs(2))
        .expect("media flows again");
    assert_eq!(media[12], 7);
    let _ = events.kill();
    let _ = events.wait();
}

/// `ICE=force` toward a phone that answers without ICE: the leg is not
/// gated by ICE (nobody would ever check it) and takes the phone's
/// signalled address, as any plain leg.
#[test]
fn a_phone_that_answers_forced_ice_without_it_gets_media_anyway() {
    let (_relay, ng, _) = common::ng::relay_with_ng();
    let mut proxy = Proxy::new(ng);
    let (caller, phone) = (Peer::v4(), Peer::v4());
    let to_phone = sdp_of(&ng_offer(
        &mut proxy,
        "ice-ignored",
        &phone_body("caller", caller.addr()),
        vec![
            ("ICE", text("force")),
            ("transport-protocol", text("RTP/AVP")),
        ],
    ));
    assert_eq!(attributes(&to_phone.render(), "ice-lite"), vec![""]);
    let to_caller = sdp_of(&proxy.call(&request(vec![
        ("command", text("answer")),
        ("call-id", text("ice-ignored")),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        ("sdp", text(phone_body("phone", phone.addr()))),
    ])));
    caller.send(
        &common::ng::media_addr(&to_caller).to_string(),
        &rtp(8, 1, 160, 0xCA, &[5; 160]),
    );
    let (media, _) = phone
        .recv_within(Duration::from_secs(2))
        .expect("media without ICE");
    assert_eq!(media[12], 5);
    phone.send(
        &common::ng::media_addr(&to_phone).to_string(),
        &rtp(8, 1, 160, 0xB0, &[6; 160]),
    );
    assert_eq!(
        caller
            .recv_within(Duration::from_secs(2))
            .expect("and back")
            .0[12],
        6
    );
}

/// Behind NAT the candidate is the advertised address (nothing is sent
/// to it here: it only appears in the body).
#[test]
fn the_candidate_is_the_advertised_address() {
    let udp_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let _relay = common::Relay::start(&[
        "--listen-ng",
        &format!("udp:127.0.0.1:{udp_port}"),
        "--media-ip",
        "127.0.0.1",
        "--advertise-ip",
        "192.0.2.10",
    ]);
    let mut proxy = Proxy::new(format!("127.0.0.1:{udp_port}").parse().expect("addr"));
    let caller = Peer::v4();
    let to_browser = sdp_of(&ng_offer(
        &mut proxy,
        "advertised",
        &phone_body("caller", caller.addr()),
        vec![("transport-protocol", text("UDP/TLS/RTP/SAVPF"))],
    ));
    let body = to_browser.render();
    let candidate = attributes(&body, "candidate:");
    assert_eq!(candidate.len(), 1, "{body}");
    assert!(candidate[0].contains(" 192.0.2.10 "), "{body}");
    assert!(!body.contains("127.0.0.1"), "{body}");
}

/// A SIP phone's audio and video call to a WebRTC party (ICE forced,
/// DTLS-SRTP toward it): the relay's offer to that party.
fn video_call_to_webrtc(proxy: &mut Proxy, call_id: &str) -> Sdp {
    let (audio, video) = (Peer::v4(), Peer::v4());
    let phone = format!(
        "v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n\
         m=video {} RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\na=sendrecv\r\n",
        audio.addr().port(),
        video.addr().port()
    );
    sdp_of(&ng_offer(
        proxy,
        call_id,
        &phone,
        vec![
            ("aor", text(AOR)),
            ("gruu", text(GRUU_A)),
            ("ICE", text("force")),
            ("transport-protocol", text("UDP/TLS/RTP/SAVPF")),
        ],
    ))
}

/// The WebRTC party's answer to [`video_call_to_webrtc`]; the relay's
/// answer to the phone.
fn webrtc_answers(proxy: &mut Proxy, call_id: &str, answer: &str) -> Sdp {
    sdp_of(&proxy.call(&request(vec![
        ("command", text("answer")),
        ("call-id", text(call_id)),
        ("from-tag", text("a-tag")),
        ("to-tag", text("b-tag")),
        ("sdp", text(answer)),
    ])))
}

/// The relay offers audio and video on one BUNDLE transport to a WebRTC
/// party; an answerer that declines the bundle (a transport per line, no
/// `a=group`, RFC 8843 §7.3.3) gets its unbundled line declined — port 0
/// toward the caller — rather than media routed where it did not ask.
#[test]
fn an_answer_that_declines_the_relays_bundle_gets_the_unbundled_line_declined() {
    let (_relay, ng, _) = common::ng::relay_with_ng();
    let mut proxy = Proxy::new(ng);
    let call_id = "declined-bundle";
    let offer = video_call_to_webrtc(&mut proxy, call_id);
    let rendered = offer.render();
    assert!(rendered.contains("a=group:BUNDLE 0 1"), "{rendered}");
    assert_eq!(
        offer.media(0).expect("audio").port,
        offer.media(1).expect("video").port,
        "{rendered}"
    );
    // The answerer keeps a transport per line and no group.
    let line = |kind: &str, port: u16, pt: &str, mid: u8| {
        format!(
            "m={kind} {port} UDP/TLS/RTP/SAVPF {pt}\r\nc=IN IP4 127.0.0.1\r\n\
             a=ice-ufrag:ansr{mid}\r\na=ice-pwd:answererpassword{mid}answerer\r\n\
             a=fingerprint:sha-256 {fp}\r\na=setup:active\r\na=mid:{mid}\r\na=rtcp-mux\r\na=sendrecv\r\n",
            fp = ["AB"; 32].join(":")
        )
    };
    let answer = format!(
        "v=0\r\no=b 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n{}a=rtpmap:0 PCMU/8000\r\n{}a=rtpmap:96 VP8/90000\r\n",
        line("audio", 40_000, "0", 0),
        line("video", 40_002, "96", 1)
    );
    let to_phone = webrtc_answers(&mut proxy, call_id, &answer);
    let text = to_phone.render();
    assert_ne!(to_phone.media(0).expect("audio").port, 0, "{text}");
    assert_eq!(
        to_phone.media(1).expect("video").port,
        0,
        "the unbundled video is declined: {text}"
    );
}

/// An answerer that accepts the relay's BUNDLE but rejects its first line
/// (the one whose socket carries the transport): the transport's ICE and
/// DTLS come from the line it kept, and the call goes on with that line.
#[test]
fn a_bundle_whose_first_line_is_rejected_keeps_its_other_line() {
    let (relay, ng, _) = common::ng::relay_with_ng();
    let mut proxy = Proxy::new(ng);
    let call_id = "owner-rejected";
    let _ = video_call_to_webrtc(&mut proxy, call_id);
    let answer = format!(
        "v=0\r\no=b 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 1\r\n\
         m=audio 0 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 127.0.0.1\r\na=mid:0\r\n\
         m=video 40002 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 127.0.0.1\r\n\
         a=ice-ufrag:ansr\r\na=ice-pwd:answererpasswordanswerer\r\n\
         a=fingerprint:sha-256 {fp}\r\na=setup:active\r\na=mid:1\r\na=rtcp-mux\r\n\
         a=rtpmap:96 VP8/90000\r\na=sendrecv\r\n",
        fp = ["CD"; 32].join(":")
    );
    let to_phone = webrtc_answers(&mut proxy, call_id, &answer);
    let text = to_phone.render();
    assert_eq!(to_phone.media(0).expect("audio").port, 0, "{text}");
    assert_ne!(to_phone.media(1).expect("video").port, 0, "{text}");
    // The session lives on; the transport waits for the kept line's peer.
    let report =
        common::stdout_json(&relay.ctl(&["get", "--call-id", call_id, "--from-tag", "a-tag"]));
    let video_remote = &report["session"]["streams"][1]["remote"];
    assert_eq!(
        video_remote["transport"], "UDP/TLS/RTP/SAVPF",
        "{video_remote}"
    );
}
