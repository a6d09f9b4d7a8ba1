//! Issue 19, T.38 fax: `m=image … udptl t38` lines are relayed as plain
//! UDP datagrams, byte for byte, under the same source policy as RTP: in
//! a call's first offer, and in re-INVITEs that switch a call's audio line
//! to T.38 and back, on the same relay ports.
//!
//! Most tests here build UDPTL packets as T.38 §9 lays them out (sequence
//! number, primary IFP, redundancy); the relay reads none of it, which is
//! the point. No T.38-capable SIP phone is packaged in Debian, but spandsp
//! is: the T.30/T.38 engine Asterisk and FreeSWITCH fax with. The last
//! tests send a real fax page between two of its T.38 terminals
//! (`tests/fax/t38_fax.py`) through a call the proxy switched to T.38, and
//! check the page arrives pixel for pixel. CI installs libspandsp2 and sets
//! `BATON_REQUIRE_SPANDSP=1`, so there they run or fail; elsewhere they
//! skip with a note when the library is missing.

mod common;

use std::net::SocketAddr;

use baton_control::ng::wire::text;
use common::media::{Peer, rtp};
use common::ng::{NgCall, flags, media_addr, ng_call, reason, relay_with_ng, request, sdp_of};

fn t38(origin: &str, media: SocketAddr) -> String {
    format!(
        "v=0\r\no={origin} 1 2 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=image {port} udptl t38\r\na=T38FaxVersion:0\r\na=T38MaxBitRate:14400\r\n\
         a=T38FaxRateManagement:transferredTCF\r\na=T38FaxMaxBuffer:262\r\n\
         a=T38FaxMaxDatagram:176\r\na=T38FaxUdpEC:t38UDPRedundancy\r\n",
        ip = media.ip(),
        port = media.port()
    )
}

fn audio(origin: &str, media: SocketAddr) -> String {
    format!(
        "v=0\r\no={origin} 1 3 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n",
        ip = media.ip(),
        port = media.port()
    )
}

/// A T.38 re-INVITE's body that keeps the audio line, disabled, and adds
/// an image line (`fax` true); or the switch back: audio enabled again, the
/// image line disabled.
fn two_lines(origin: &str, version: u32, media: SocketAddr, fax: bool) -> String {
    let (audio, image) = if fax {
        (0, media.port())
    } else {
        (media.port(), 0)
    };
    format!(
        "v=0\r\no={origin} 1 {version} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {audio} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n\
         m=image {image} udptl t38\r\na=T38FaxVersion:0\r\na=T38FaxMaxDatagram:176\r\n\
         a=T38FaxUdpEC:t38UDPRedundancy\r\n",
        ip = media.ip(),
    )
}

/// A UDPTL packet: its sequence number, a primary IFP of `n` bytes and
/// one redundant IFP (T.38 §9.1, ASN.1 PER).
fn udptl(seq: u16, n: u8) -> Vec<u8> {
    let mut p = seq.to_be_bytes().to_vec();
    p.push(n);
    p.extend((0..n).map(|i| i.wrapping_mul(31)));
    p.extend([0x00, 0x01, 0x02, 0x6e, 0x10]);
    p
}

fn exchange(from: &Peer, to_relay: SocketAddr, to: &Peer, seq: u16) {
    let packet = udptl(seq, 40);
    from.send(&to_relay.to_string(), &packet);
    assert_eq!(to.recv().0, packet, "byte for byte");
}

/// An `offer` or `answer` of `sdp` from the `from` tag's side; the body the
/// relay gives the other side.
fn body_via(
    call: &mut NgCall,
    command: &str,
    (from, to): (&str, &str),
    sdp: String,
) -> baton_control::sip::sdp::Sdp {
    let request = request(vec![
        ("command", text(command)),
        ("call-id", text(call.call_id.as_str())),
        ("from-tag", text(from)),
        ("to-tag", text(to)),
        ("sdp", text(sdp)),
    ]);
    sdp_of(&call.proxy.call(&request))
}

#[test]
fn a_call_switches_to_t38_and_back_on_the_same_relay_ports() {
    let (relay, ng, _) = relay_with_ng();
    let mut call = ng_call(ng, "fax-call", vec![]);
    call.a.send(
        &call.a_to_relay.to_string(),
        &rtp(8, 1, 160, 0xA, &[0xD5; 160]),
    );
    assert_eq!(call.bob.recv().0[1] & 0x7F, 8);

    // bob's gateway hears a fax tone and re-INVITEs to T.38.
    let bob_addr = call.bob.addr();
    let a_addr = call.a.addr();
    let to_a = body_via(
        &mut call,
        "offer",
        ("bob-tag", "a-tag"),
        t38("bob", bob_addr),
    );
    let image = to_a.media(0).expect("m=image");
    assert_eq!(
        (image.kind.as_str(), image.proto.as_str()),
        ("image", "udptl")
    );
    assert_eq!(media_addr(&to_a), call.a_to_relay, "the same relay port");
    assert!(to_a.render().contains("a=T38FaxUdpEC:t38UDPRedundancy\r\n"));
    // Until the answer accepts T.38 the stream is still RTP, its checks in
    // force: audio passes, and a datagram that is no RTP does not.
    call.a.send(
        &call.a_to_relay.to_string(),
        &rtp(8, 2, 320, 0xA, &[0xD5; 160]),
    );
    assert_eq!(call.bob.recv().0[1] & 0x7F, 8);
    call.a.send(&call.a_to_relay.to_string(), &udptl(1, 8));
    call.bob.expect_silence();
    let to_bob = body_via(
        &mut call,
        "answer",
        ("bob-tag", "a-tag"),
        t38("alice", a_addr),
    );
    assert_eq!(media_addr(&to_bob), call.bob_to_relay);
    assert!(to_bob.render().contains("m=image "));

    for seq in 0..5 {
        exchange(&call.a, call.a_to_relay, &call.bob, seq);
        exchange(&call.bob, call.bob_to_relay, &call.a, 100 + seq);
    }
    // A stranger's datagram goes nowhere.
    let stranger = Peer::v4();
    stranger.send(&call.a_to_relay.to_string(), &udptl(9, 10));
    call.bob.expect_silence();

    // No handoff in the middle of a fax.
    let handoff = call.proxy.call(&request(vec![
        ("command", text("offer")),
        ("call-id", text("fax-call")),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        ("sdp", text(t38("alice-b", a_addr))),
        (
            "gruu",
            text("sip:alice@example.com;gr=urn:uuid:00000000-0000-4000-8000-00000000000b"),
        ),
        ("new-call-id", text("fax-b")),
        ("new-from-tag", text("b")),
        ("flags", flags(&["baton-handoff"])),
    ]));
    assert!(reason(&handoff).contains("T.38"), "{handoff:?}");

    // The fax is done: A re-INVITEs back to audio.
    let to_bob = body_via(
        &mut call,
        "offer",
        ("a-tag", "bob-tag"),
        audio("alice", a_addr),
    );
    assert_eq!(to_bob.media(0).expect("m=audio").kind, "audio");
    let _ = body_via(
        &mut call,
        "answer",
        ("a-tag", "bob-tag"),
        audio("bob", bob_addr),
    );
    call.a.send(
        &call.a_to_relay.to_string(),
        &rtp(8, 3, 480, 0xA, &[0xD5; 160]),
    );
    assert_eq!(call.bob.recv().0[1] & 0x7F, 8, "RTP again");
    let stats =
        common::stdout_json(&relay.ctl(&["get", "--call-id", "fax-call", "--from-tag", "a-tag"]));
    let stream = &stats["session"]["streams"][0];
    assert_eq!(stream["kind"], "audio", "{stats}");
    assert_eq!(stream["user"]["stats"]["drops"]["stranger"], "1", "{stats}");
}

#[test]
fn a_call_that_starts_in_t38_relays_datagrams() {
    let (_relay, ng, _) = relay_with_ng();
    let mut proxy = common::ng::Proxy::new(ng);
    let (fax_a, fax_b) = (Peer::v4(), Peer::v4());
    let to_b = sdp_of(&proxy.call(&request(vec![
        ("command", text("offer")),
        ("call-id", text("fax-only")),
        ("from-tag", text("a-tag")),
        ("sdp", text(t38("fax-a", fax_a.addr()))),
    ])));
    let to_a = sdp_of(&proxy.call(&request(vec![
        ("command", text("answer")),
        ("call-id", text("fax-only")),
        ("from-tag", text("a-tag")),
        ("to-tag", text("b-tag")),
        ("sdp", text(t38("fax-b", fax_b.addr()))),
    ])));
    for seq in 0..3 {
        exchange(&fax_a, media_addr(&to_a), &fax_b, seq);
        exchange(&fax_b, media_addr(&to_b), &fax_a, 50 + seq);
    }
}

#[test]
fn a_t38_reinvite_that_adds_an_image_line_moves_the_stream_there_and_back() {
    let (relay, ng, _) = relay_with_ng();
    let mut call = ng_call(ng, "fax-added", vec![]);
    let (a_addr, bob_addr) = (call.a.addr(), call.bob.addr());

    // bob's gateway disables audio and adds m=image (RFC 3264 §8.2).
    let to_a = body_via(
        &mut call,
        "offer",
        ("bob-tag", "a-tag"),
        two_lines("bob", 2, bob_addr, true),
    );
    let (audio, image) = (to_a.media(0).expect("audio"), to_a.media(1).expect("image"));
    assert_eq!(
        (audio.kind.as_str(), audio.port),
        ("audio", 0),
        "{}",
        to_a.render()
    );
    assert_eq!(image.proto, "udptl");
    assert_eq!(
        image.rtp,
        Some(call.a_to_relay),
        "the stream's relay port, moved"
    );
    let to_bob = body_via(
        &mut call,
        "answer",
        ("bob-tag", "a-tag"),
        two_lines("alice", 2, a_addr, true),
    );
    assert_eq!(to_bob.media(0).expect("audio").port, 0);
    assert_eq!(to_bob.media(1).expect("image").rtp, Some(call.bob_to_relay));
    for seq in 0..4 {
        exchange(&call.a, call.a_to_relay, &call.bob, seq);
        exchange(&call.bob, call.bob_to_relay, &call.a, 200 + seq);
    }

    // Back to audio: the audio line enabled again, the image one disabled.
    let to_bob = body_via(
        &mut call,
        "offer",
        ("a-tag", "bob-tag"),
        two_lines("alice", 3, a_addr, false),
    );
    assert_eq!(to_bob.media(0).expect("audio").rtp, Some(call.bob_to_relay));
    assert_eq!(to_bob.media(1).expect("image").port, 0);
    let to_a = body_via(
        &mut call,
        "answer",
        ("a-tag", "bob-tag"),
        two_lines("bob", 3, bob_addr, false),
    );
    assert_eq!(to_a.media(0).expect("audio").rtp, Some(call.a_to_relay));
    call.a.send(
        &call.a_to_relay.to_string(),
        &rtp(8, 7, 960, 0xA, &[0xD5; 160]),
    );
    assert_eq!(call.bob.recv().0[1] & 0x7F, 8, "RTP again");
    call.bob.send(
        &call.bob_to_relay.to_string(),
        &rtp(8, 9, 1280, 0xB, &[0xD5; 160]),
    );
    assert_eq!(call.a.recv().0[1] & 0x7F, 8, "and back");
    let stats =
        common::stdout_json(&relay.ctl(&["get", "--call-id", "fax-added", "--from-tag", "a-tag"]));
    let streams = stats["session"]["streams"].as_array().expect("streams");
    assert_eq!(streams.len(), 1, "one stream throughout: {stats}");
    assert_eq!(streams[0]["kind"], "audio", "{stats}");
}

/// Whether spandsp and libtiff load from Python; required (a failure)
/// under `BATON_REQUIRE_SPANDSP=1`.
fn spandsp_available() -> bool {
    let loads = std::process::Command::new("python3")
        .args([
            "-c",
            "import ctypes, ctypes.util as u\n\
             ctypes.CDLL(u.find_library('spandsp') or 'libspandsp.so.2')\n\
             ctypes.CDLL(u.find_library('tiff') or 'libtiff.so.6')",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        loads || std::env::var_os("BATON_REQUIRE_SPANDSP").is_none(),
        "BATON_REQUIRE_SPANDSP is set but python3 cannot load libspandsp2 and libtiff"
    );
    if !loads {
        eprintln!("skipped: libspandsp2 (or python3) is missing");
    }
    loads
}

/// How the receiving gateway's re-INVITE turns the call to T.38.
#[derive(Clone, Copy)]
enum Switch {
    /// `m=audio` becomes `m=image` in place.
    InPlace,
    /// `m=audio 0` stays, `m=image` is added.
    AddedLine,
}

/// Sends a fax page from a spandsp T.38 terminal behind alice's leg to one
/// behind bob's, through a call set up as audio and switched to T.38 by
/// bob's re-INVITE; returns the script's report and the session's figures.
fn fax_through_relay(switch: Switch) -> (serde_json::Value, serde_json::Value) {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    let (relay, ng, _) = relay_with_ng();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fax/t38_fax.py");
    let mut fax = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut stdout = BufReader::new(fax.stdout.take().expect("stdout"));
    let mut stdin = fax.stdin.take().expect("stdin");
    let mut line = String::new();
    stdout.read_line(&mut line).expect("the fax ports");
    let ports: serde_json::Value = serde_json::from_str(&line).expect("json");
    let port = |side: &str| -> SocketAddr {
        let port = ports[side].as_u64().expect("a port");
        format!("127.0.0.1:{port}").parse().expect("addr")
    };
    let (alice, bob) = (port("sender"), port("receiver"));

    let call_id = match switch {
        Switch::InPlace => "fax-real-in-place",
        Switch::AddedLine => "fax-real-added",
    };
    let mut call = NgCall {
        proxy: common::ng::Proxy::new(ng),
        call_id: call_id.to_owned(),
        a_to_relay: alice,
        bob_to_relay: bob,
        a: Peer::v4(),
        bob: Peer::v4(),
    };
    let to_bob = sdp_of(&call.proxy.call(&request(vec![
        ("command", text("offer")),
        ("call-id", text(call_id)),
        ("from-tag", text("a-tag")),
        ("sdp", text(audio("alice", alice))),
    ])));
    let _ = body_via(&mut call, "answer", ("a-tag", "bob-tag"), audio("bob", bob));
    let bob_to_relay = media_addr(&to_bob);
    let (offer, answer) = match switch {
        Switch::InPlace => (t38("bob", bob), t38("alice", alice)),
        Switch::AddedLine => (
            two_lines("bob", 4, bob, true),
            two_lines("alice", 4, alice, true),
        ),
    };
    let image_line = usize::from(matches!(switch, Switch::AddedLine));
    let to_a = body_via(&mut call, "offer", ("bob-tag", "a-tag"), offer);
    let alice_to_relay = to_a
        .media(image_line)
        .expect("m=image")
        .rtp
        .expect("address");
    let to_bob = body_via(&mut call, "answer", ("bob-tag", "a-tag"), answer);
    assert_eq!(
        to_bob.media(image_line).expect("m=image").rtp,
        Some(bob_to_relay),
        "the stream keeps its relay port"
    );

    writeln!(
        stdin,
        "{}",
        serde_json::json!({
            "sender_to": alice_to_relay.to_string(),
            "receiver_to": bob_to_relay.to_string(),
        })
    )
    .expect("tell the fax where the relay is");
    // The script gives up after 180 s of fax time, polled at most 2 ms per
    // 20 ms step: it ends by itself within about 20 s.
    line.clear();
    stdout.read_line(&mut line).expect("the fax report");
    let _ = fax.wait();
    let report: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("no report ({e}): {line:?}"));
    let stats =
        common::stdout_json(&relay.ctl(&["get", "--call-id", call_id, "--from-tag", "a-tag"]));
    (report, stats)
}

fn assert_fax_arrived(report: &serde_json::Value, stats: &serde_json::Value) {
    for side in ["sender", "receiver"] {
        assert_eq!(
            report[side]["completion_text"], "OK",
            "the {side} finished the fax: {report}"
        );
        assert_eq!(report[side]["malformed"], 0, "{report}");
    }
    assert_eq!(report["sender"]["pages_tx"], 1, "{report}");
    assert_eq!(report["receiver"]["pages_rx"], 1, "{report}");
    assert_eq!(report["receiver"]["bad_rows"], 0, "{report}");
    assert_eq!(
        report["image_equal"], true,
        "the page arrived pixel for pixel: {report}"
    );
    // Every datagram each terminal sent reached the other through the relay.
    assert_eq!(
        report["sender"]["datagrams_sent"], report["receiver"]["datagrams_received"],
        "{report}"
    );
    assert_eq!(
        report["receiver"]["datagrams_sent"], report["sender"]["datagrams_received"],
        "{report}"
    );
    // And the relay counted each of them, with no drop.
    let stream = &stats["session"]["streams"][0];
    assert_eq!(stream["kind"], "image", "{stats}");
    let sent = report["sender"]["datagrams_sent"].to_string();
    let answered = report["receiver"]["datagrams_sent"].to_string();
    assert_eq!(
        stream["user"]["stats"]["rtp_packets_in"].as_str(),
        Some(sent.as_str()),
        "{stats}"
    );
    assert_eq!(
        stream["remote"]["stats"]["packets_out"].as_str(),
        Some(sent.as_str()),
        "{stats}"
    );
    assert_eq!(
        stream["remote"]["stats"]["rtp_packets_in"].as_str(),
        Some(answered.as_str()),
        "{stats}"
    );
    assert_eq!(
        stream["user"]["stats"]["drops"],
        serde_json::json!({}),
        "{stats}"
    );
    assert_eq!(
        stream["remote"]["stats"]["drops"],
        serde_json::json!({}),
        "{stats}"
    );
}

#[test]
fn a_real_fax_goes_through_a_call_switched_to_t38_in_place() {
    if !spandsp_available() {
        return;
    }
    let (report, stats) = fax_through_relay(Switch::InPlace);
    assert_fax_arrived(&report, &stats);
}

#[test]
fn a_real_fax_goes_through_a_call_switched_to_t38_on_an_added_line() {
    if !spandsp_available() {
        return;
    }
    let (report, stats) = fax_through_relay(Switch::AddedLine);
    assert_fax_arrived(&report, &stats);
}
