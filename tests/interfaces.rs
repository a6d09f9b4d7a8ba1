//! Issue 19, named interfaces: a relay started with `--interface
//! NAME/IP[!ADVERTISED]` opens each leg on the interface ng's `direction`
//! (or `from-interface` / `to-interface`) names, remembers it for answers
//! and re-offers, opens a handoff's leg on the new device's interface, and
//! shows ports per interface. Both interfaces are loopback addresses
//! (127.0.0.1 and 127.0.0.2), so nothing leaves the host.

mod common;

use baton_control::ng::wire::text;
use common::Relay;
use common::media::{Peer, rtp};
use common::ng::{Proxy, body, flags, media_addr, reason, request, sdp_of};

fn relay() -> (Relay, Proxy) {
    let port = common::free_udp_port();
    let ng = format!("udp:127.0.0.1:{port}");
    let relay = Relay::start(&[
        "--interface",
        "inside/127.0.0.1",
        "--interface",
        "outside/127.0.0.2!192.0.2.50",
        "--listen-ng",
        &ng,
    ]);
    let proxy = Proxy::new(format!("127.0.0.1:{port}").parse().expect("addr"));
    (relay, proxy)
}

#[test]
fn legs_open_on_the_interfaces_direction_names_and_keep_them() {
    let (relay, mut proxy) = relay();
    let (a, bob) = (Peer::v4(), Peer::v4());
    // A is inside, bob outside: bob gets the outside address as announced.
    let to_bob = sdp_of(&proxy.call(&request(vec![
        ("command", text("offer")),
        ("call-id", text("iface-1")),
        ("from-tag", text("a-tag")),
        ("sdp", text(body("alice", a.addr(), ""))),
        ("direction", flags(&["inside", "outside"])),
    ])));
    assert_eq!(media_addr(&to_bob).ip().to_string(), "192.0.2.50");
    // The answer names no direction: the legs keep theirs.
    let to_a = sdp_of(&proxy.call(&request(vec![
        ("command", text("answer")),
        ("call-id", text("iface-1")),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        ("sdp", text(body("bob", bob.addr(), ""))),
    ])));
    assert_eq!(media_addr(&to_a).ip().to_string(), "127.0.0.1");
    // Media: bob sends to the outside address the relay is bound on.
    let bob_to_relay = format!("127.0.0.2:{}", media_addr(&to_bob).port());
    a.send(
        &media_addr(&to_a).to_string(),
        &rtp(8, 1, 160, 0xA, &[1; 160]),
    );
    let (packet, from) = bob.recv();
    assert_eq!(packet[8..12], 0xAu32.to_be_bytes());
    assert_eq!(
        from.to_string(),
        bob_to_relay,
        "bob hears the relay's outside address"
    );
    bob.send(&bob_to_relay, &rtp(8, 1, 160, 0xB, &[1; 160]));
    assert_eq!(a.recv().0[8..12], 0xBu32.to_be_bytes());
    // A re-offer from bob's side without direction keeps bob outside.
    let again = sdp_of(&proxy.call(&request(vec![
        ("command", text("offer")),
        ("call-id", text("iface-1")),
        ("from-tag", text("bob-tag")),
        ("to-tag", text("a-tag")),
        ("sdp", text(body("bob", bob.addr(), "a=sendonly\r\n"))),
    ])));
    assert_eq!(
        media_addr(&again).ip().to_string(),
        "127.0.0.1",
        "toward A: inside"
    );
    // Unknown names are refused, and nothing is created.
    for (key, value) in [
        ("direction", flags(&["inside", "nowhere"])),
        ("from-interface", text("elsewhere")),
    ] {
        let refused = proxy.call(&request(vec![
            ("command", text("offer")),
            ("call-id", text("iface-2")),
            ("from-tag", text("a-tag")),
            ("sdp", text(body("alice", a.addr(), ""))),
            (key, value),
        ]));
        let why = reason(&refused);
        assert!(why.contains("unknown interface"), "{why}");
        assert!(why.contains("inside, outside"), "{why}");
    }
    let listed = common::stdout_json(&relay.ctl(&["list"]));
    assert_eq!(
        listed["sessions"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    let session =
        common::stdout_json(&relay.ctl(&["get", "--call-id", "iface-1", "--from-tag", "a-tag"]));
    assert_eq!(session["session"]["user_interface"], "inside", "{session}");
    assert_eq!(
        session["session"]["remote_interface"], "outside",
        "{session}"
    );
    // Ports per interface.
    let stats = common::stdout_json(&relay.ctl(&["stats"]));
    let ports = stats["ports"].as_array().expect("ports");
    let in_use = |name: &str| {
        ports
            .iter()
            .find(|p| p["interface"] == name)
            .map(|p| p["total_pairs"].as_u64().unwrap_or(0) - p["free_pairs"].as_u64().unwrap_or(0))
    };
    assert_eq!(in_use("inside"), Some(1), "{stats}");
    assert_eq!(in_use("outside"), Some(1), "{stats}");
}

#[test]
fn a_handoff_opens_the_new_devices_leg_on_its_own_interface() {
    let (_relay, mut proxy) = relay();
    let gruu_a = "sip:alice@example.com;gr=urn:uuid:00000000-0000-4000-8000-00000000000a";
    let gruu_b = "sip:alice@example.com;gr=urn:uuid:00000000-0000-4000-8000-00000000000b";
    let (a, b, bob) = (Peer::v4(), Peer::v4(), Peer::v4());
    let _ = sdp_of(&proxy.call(&request(vec![
        ("command", text("offer")),
        ("call-id", text("iface-h")),
        ("from-tag", text("a-tag")),
        ("sdp", text(body("alice", a.addr(), ""))),
        ("aor", text("sip:alice@example.com")),
        ("gruu", text(gruu_a)),
        ("direction", flags(&["inside", "outside"])),
    ])));
    let _ = sdp_of(&proxy.call(&request(vec![
        ("command", text("answer")),
        ("call-id", text("iface-h")),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        ("sdp", text(body("bob", bob.addr(), ""))),
    ])));
    // Device B joins from outside (a phone on mobile data, say).
    let _ = sdp_of(&proxy.call(&request(vec![
        ("command", text("offer")),
        ("call-id", text("iface-h")),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        ("sdp", text(body("alice-b", b.addr(), ""))),
        ("gruu", text(gruu_b)),
        ("new-call-id", text("iface-h-b")),
        ("new-from-tag", text("b-tag")),
        ("from-interface", text("outside")),
        ("flags", flags(&["baton-handoff"])),
    ])));
    let to_b = sdp_of(&proxy.call(&request(vec![
        ("command", text("answer")),
        ("call-id", text("iface-h")),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        ("sdp", text(body("bob", bob.addr(), ""))),
    ])));
    assert_eq!(
        media_addr(&to_b).ip().to_string(),
        "192.0.2.50",
        "B's leg is outside"
    );
    let b_to_relay = format!("127.0.0.2:{}", media_addr(&to_b).port());
    b.send(&b_to_relay, &rtp(8, 1, 160, 0xB0B, &[1; 160]));
    assert_eq!(bob.recv().0[1] & 0x7F, 8, "bob hears B");
}
