//! Issue 19, T.38 fax: `m=image … udptl t38` lines are relayed as plain
//! UDP datagrams, byte for byte, under the same source policy as RTP: in
//! a call's first offer, and in re-INVITEs that switch a call's audio line
//! to T.38 and back, on the same relay ports.
//!
//! No T.38-capable SIP peer is packaged in Debian and no capture was at
//! hand, so the fax side is a stream of UDPTL packets built as T.38 §9
//! lays them out (sequence number, primary IFP, redundancy); the relay
//! reads none of it, which is the point.

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
