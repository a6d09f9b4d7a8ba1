//! Issue 19, rtpengine's media commands over ng, sent as Kamailio's module
//! sends them (`rtpengine_block_media("directional")` and friends): `block
//! media`, `silence media`, `block DTMF`, their opposites, and
//! `statistics`, with media flowing through the real binary.

mod common;

use baton_control::ng::wire::{get_str, text};
use common::media::rtp;
use common::ng::{NgCall, flags, ng_call, reason, relay_with_ng, request, result};
use serde_bencode::value::Value;

/// A request as Kamailio's module builds one for a media command: the
/// call, the from-tag only with `directional`, and what it always adds.
fn kamailio(command: &str, call: &NgCall, from_tag: Option<&str>, words: &[&str]) -> Value {
    let mut pairs = vec![
        ("command", text(command)),
        ("call-id", text(call.call_id.as_str())),
        ("received-from", flags(&["IP4", "127.0.0.1"])),
        ("sip-message-type", text("sip_request")),
        ("supports", flags(&["load limit"])),
    ];
    let mut all = words.to_vec();
    if let Some(tag) = from_tag {
        pairs.push(("from-tag", text(tag)));
        all.push("directional");
    }
    if !all.is_empty() {
        pairs.push(("flags", flags(&all)));
    }
    request(pairs)
}

fn ok(call: &mut NgCall, command: &str, from_tag: Option<&str>, words: &[&str]) {
    let message = kamailio(command, call, from_tag, words);
    let reply = call.proxy.call(&message);
    assert_eq!(result(&reply), "ok", "{reply:?}");
}

/// A sends one PCMA packet and one RFC 4733 packet; what bob gets.
fn a_speaks(call: &NgCall, seq: u16) -> Vec<Vec<u8>> {
    let to = call.a_to_relay.to_string();
    call.a
        .send(&to, &rtp(8, seq, u32::from(seq) * 160, 0xA, &[0x55; 160]));
    call.a.send(
        &to,
        &rtp(
            101,
            seq.wrapping_add(1),
            u32::from(seq) * 160,
            0xA,
            &[1, 0x0A, 0, 160],
        ),
    );
    let mut got = Vec::new();
    while let Some((packet, _)) = call.bob.recv_within(std::time::Duration::from_millis(300)) {
        got.push(packet);
    }
    got
}

fn pts(packets: &[Vec<u8>]) -> Vec<u8> {
    packets.iter().map(|p| p[1] & 0x7F).collect()
}

#[test]
fn block_silence_and_dtmf_commands_act_per_participant_and_per_call() {
    let (relay, ng, _) = relay_with_ng();
    let mut call = ng_call(ng, "media-commands", vec![]);
    assert_eq!(pts(&a_speaks(&call, 10)), [8, 101]);

    // A's media blocked: its DTMF still passes; bob's media still reaches A.
    ok(&mut call, "block media", Some("a-tag"), &[]);
    assert_eq!(pts(&a_speaks(&call, 20)), [101]);
    call.bob.send(
        &call.bob_to_relay.to_string(),
        &rtp(8, 1, 160, 0xB, &[0x55; 160]),
    );
    assert_eq!(call.a.recv().0[12..], [0x55; 160]);

    // A call-wide unblock leaves A's own block; with `all` it goes too.
    ok(&mut call, "unblock media", None, &[]);
    assert_eq!(pts(&a_speaks(&call, 30)), [101]);
    ok(&mut call, "unblock media", None, &["all"]);
    assert_eq!(pts(&a_speaks(&call, 40)), [8, 101]);

    // Silence for the whole call: G.711 payloads become A-law silence.
    ok(&mut call, "silence media", None, &[]);
    let got = a_speaks(&call, 50);
    assert_eq!(pts(&got), [8, 101]);
    assert!(
        got[0][12..].iter().all(|&b| b == 0xD5),
        "{:?}",
        &got[0][12..20]
    );
    call.bob.send(
        &call.bob_to_relay.to_string(),
        &rtp(8, 2, 320, 0xB, &[0x55; 160]),
    );
    assert!(call.a.recv().0[12..].iter().all(|&b| b == 0xD5));
    ok(&mut call, "unsilence media", None, &[]);
    assert_eq!(a_speaks(&call, 60)[0][12..], [0x55; 160]);

    // A's DTMF blocked: its audio passes.
    ok(&mut call, "block DTMF", Some("a-tag"), &[]);
    assert_eq!(pts(&a_speaks(&call, 70)), [8]);
    ok(&mut call, "unblock DTMF", Some("a-tag"), &[]);
    assert_eq!(pts(&a_speaks(&call, 80)), [8, 101]);

    // Counted drops, and the session shows what is set.
    ok(&mut call, "block media", Some("bob-tag"), &[]);
    let session = common::stdout_json(&relay.ctl(&[
        "get",
        "--call-id",
        "media-commands",
        "--from-tag",
        "a-tag",
    ]));
    let session = &session["session"];
    assert_eq!(session["remote_control"]["block_media"], true, "{session}");
    assert_eq!(session["user_control"]["block_media"], false, "{session}");
    let drops = &session["streams"][0]["user"]["stats"]["drops"];
    assert_eq!(drops["media_blocked"], "2", "{session}");
    assert_eq!(drops["dtmf_blocked"], "1", "{session}");

    // Unknown calls and tags, and labels, are errors.
    let unknown = call.proxy.call(&request(vec![
        ("command", text("block media")),
        ("call-id", text("no-such-call")),
    ]));
    assert!(reason(&unknown).contains("not found"), "{unknown:?}");
    let stranger = kamailio("block media", &call, Some("who"), &[]);
    let stranger = call.proxy.call(&stranger);
    assert!(reason(&stranger).contains("no participant"), "{stranger:?}");
    let labelled = call.proxy.call(&request(vec![
        ("command", text("block media")),
        ("call-id", text("media-commands")),
        ("label", text("caller")),
    ]));
    assert!(reason(&labelled).contains("label"), "{labelled:?}");

    // statistics, in rtpengine's shape.
    let stats = call
        .proxy
        .call(&request(vec![("command", text("statistics"))]));
    assert_eq!(result(&stats), "ok");
    let Some(Value::Dict(statistics)) = stats.get(b"statistics".as_slice()) else {
        panic!("{stats:?}");
    };
    let section = |name: &str| match statistics.get(name.as_bytes()) {
        Some(Value::Dict(d)) => d.clone(),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(
        section("currentstatistics").get(b"sessionsown".as_slice()),
        Some(&Value::Int(1))
    );
    // Every `block media` request, answered or refused: two and three.
    assert_eq!(
        section("controlstatistics").get(b"totalblkmedia".as_slice()),
        Some(&Value::Int(5))
    );
    assert!(get_str(&section("totalstatistics"), "uptime").is_some());
}
