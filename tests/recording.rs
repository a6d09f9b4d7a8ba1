//! Issue 19, call recording through the real binary: a call started with
//! ng's `record-call` flag and handed off A → B → A is one pcap with one
//! continuous stream per direction (tshark reads it so) and a JSON file
//! with the call's devices and handoffs; `stop`/`start recording` pause
//! and resume; recording without a directory, or into one that cannot be
//! written, is refused with a reason.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use baton_control::ng::wire::text;
use common::Relay;
use common::gst::{tshark_present, tshark_rtp_streams};
use common::media::{Peer, rtp};
use common::ng::{Proxy, body, flags, media_addr, reason, request, result, sdp_of};

const AOR: &str = "sip:alice@example.com";
const GRUU_A: &str = "sip:alice@example.com;gr=urn:uuid:00000000-0000-4000-8000-00000000000a";
const GRUU_B: &str = "sip:alice@example.com;gr=urn:uuid:00000000-0000-4000-8000-00000000000b";

fn relay(dir: &Path) -> (Relay, Proxy) {
    let port = common::free_udp_port();
    let ng = format!("udp:127.0.0.1:{port}");
    let relay = Relay::start(&[
        "--listen-ng",
        &ng,
        "--recording-dir",
        &dir.to_string_lossy(),
        "--recording-wav",
    ]);
    (
        relay,
        Proxy::new(format!("127.0.0.1:{port}").parse().expect("addr")),
    )
}

/// The user's device (`gruu`) at `device` takes call `call` from
/// whichever device has it; the relay address it is to send to.
fn hand_over(
    proxy: &mut Proxy,
    call: &str,
    gruu: &str,
    device: &Peer,
    bob: &Peer,
    n: u32,
) -> SocketAddr {
    let _ = sdp_of(&proxy.call(&request(vec![
        ("command", text("offer")),
        ("call-id", text(call)),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        ("sdp", text(body("alice", device.addr(), ""))),
        ("gruu", text(gruu)),
        ("new-call-id", text(format!("{call}-device-{n}"))),
        ("new-from-tag", text(format!("d{n}"))),
        ("flags", flags(&["baton-handoff"])),
    ])));
    media_addr(&sdp_of(&proxy.call(&request(vec![
        ("command", text("answer")),
        ("call-id", text(call)),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        ("sdp", text(body("bob", bob.addr(), ""))),
    ]))))
}

/// `count` packets from `device` (its own SSRC and numbering), each one
/// waited for at bob.
fn talk(device: &Peer, to: SocketAddr, bob: &Peer, ssrc: u32, first_seq: u16, count: u16) {
    for i in 0..count {
        let seq = first_seq.wrapping_add(i);
        device.send(
            &to.to_string(),
            &rtp(8, seq, u32::from(seq).wrapping_mul(160), ssrc, &[0xD5; 160]),
        );
        let _ = bob.recv();
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn wait_for(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
        assert!(Instant::now() < deadline, "{} never came", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_handed_off_call_is_one_recording_with_its_device_timeline() {
    let dir = tempfile::tempdir().expect("dir");
    let (_relay, mut proxy) = relay(dir.path());
    let (a, b, bob) = (Peer::v4(), Peer::v4(), Peer::v4());
    let to_bob = sdp_of(&proxy.call(&request(vec![
        ("command", text("offer")),
        ("call-id", text("recorded")),
        ("from-tag", text("a-tag")),
        ("sdp", text(body("alice", a.addr(), ""))),
        ("aor", text(AOR)),
        ("gruu", text(GRUU_A)),
        ("flags", flags(&["record-call"])),
    ])));
    let a_to_relay = media_addr(&sdp_of(&proxy.call(&request(vec![
        ("command", text("answer")),
        ("call-id", text("recorded")),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        ("sdp", text(body("bob", bob.addr(), ""))),
    ]))));
    talk(&a, a_to_relay, &bob, 0xA, 1000, 30);
    bob.send(
        &media_addr(&to_bob).to_string(),
        &rtp(8, 7, 160, 0xB0B, &[0xD5; 160]),
    );
    let _ = a.recv();
    let b_to_relay = hand_over(&mut proxy, "recorded", GRUU_B, &b, &bob, 1);
    talk(&b, b_to_relay, &bob, 0xB, 50_000, 30);
    let a_again = hand_over(&mut proxy, "recorded", GRUU_A, &a, &bob, 2);
    talk(&a, a_again, &bob, 0xA, 1030, 30);

    let deleted = proxy.call(&request(vec![
        ("command", text("delete")),
        ("call-id", text("recorded")),
    ]));
    assert_eq!(result(&deleted), "ok");
    let files: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    let json_name = files
        .iter()
        .find(|f| f.starts_with("recorded-") && f.ends_with(".json"))
        .cloned()
        .or_else(|| {
            let pcap = files.iter().find(|f| f.ends_with(".pcap"))?;
            Some(pcap.replace(".pcap", ".json"))
        })
        .expect("a recording");
    let metadata: serde_json::Value =
        serde_json::from_str(&wait_for(&dir.path().join(&json_name))).expect("JSON");
    assert_eq!(metadata["call_id"], "recorded");
    assert_eq!(metadata["aor"], AOR);
    let devices: Vec<&str> = metadata["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| d["gruu"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(devices, [GRUU_A, GRUU_B, GRUU_A], "{metadata}");
    assert_eq!(
        metadata["handoffs"].as_array().map(Vec::len),
        Some(2),
        "{metadata}"
    );
    let pcap = dir
        .path()
        .join(metadata["pcap"].as_str().expect("pcap name"));
    assert!(pcap.exists());

    // What bob heard is one stream in the recording: 90 packets, one SSRC,
    // nothing lost, no problem flagged; what the devices heard, another.
    if tshark_present() {
        let toward_remote = tshark_rtp_streams(&pcap, 20_000).expect("tshark");
        assert_eq!(toward_remote.len(), 1, "{toward_remote:?}");
        assert_eq!(toward_remote[0].packets, 90, "{toward_remote:?}");
        assert_eq!(toward_remote[0].lost, 0, "{toward_remote:?}");
        assert!(!toward_remote[0].problem, "{toward_remote:?}");
        assert_eq!(toward_remote[0].ssrc, 0xA, "A's SSRC throughout");
        let toward_user = tshark_rtp_streams(&pcap, 20_001).expect("tshark");
        assert_eq!(toward_user.len(), 1, "{toward_user:?}");
    }

    // The WAV of what bob heard: A-law, one file across both handoffs,
    // 90 packets of 160 samples and the real time between the devices.
    let listing: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    let wavs: Vec<&str> = metadata["wav"]
        .as_array()
        .unwrap_or_else(|| panic!("wav files: {listing:?} {metadata}"))
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    let to_remote = wavs
        .iter()
        .find(|n| n.ends_with("-0-to-remote.wav"))
        .expect("the remote's WAV");
    let wav = std::fs::read(dir.path().join(to_remote)).expect("wav");
    assert_eq!(&wav[0..4], b"RIFF");
    assert_eq!(&wav[8..12], b"WAVE");
    assert_eq!(u16::from_le_bytes([wav[20], wav[21]]), 6, "A-law");
    let data = u32::from_le_bytes([wav[54], wav[55], wav[56], wav[57]]) as usize;
    assert_eq!(wav.len(), 58 + data);
    assert!((90 * 160..90 * 160 + 16_000).contains(&data), "{data}");
    assert!(
        wavs.iter().any(|n| n.ends_with("-0-to-user.wav")),
        "{wavs:?}"
    );
}

#[test]
fn recording_pauses_resumes_and_is_refused_without_a_directory() {
    let dir = tempfile::tempdir().expect("dir");
    let (_relay, mut proxy) = relay(dir.path());
    let (a, bob) = (Peer::v4(), Peer::v4());
    let _ = sdp_of(&proxy.call(&request(vec![
        ("command", text("offer")),
        ("call-id", text("paused")),
        ("from-tag", text("a-tag")),
        ("sdp", text(body("alice", a.addr(), ""))),
    ])));
    let a_to_relay = media_addr(&sdp_of(&proxy.call(&request(vec![
        ("command", text("answer")),
        ("call-id", text("paused")),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        ("sdp", text(body("bob", bob.addr(), ""))),
    ]))));
    let command = |proxy: &mut Proxy,
                   command: &str,
                   extra: Vec<(&'static str, serde_bencode::value::Value)>| {
        let mut pairs = vec![("command", text(command)), ("call-id", text("paused"))];
        pairs.extend(extra);
        proxy.call(&request(pairs))
    };
    assert_eq!(
        result(&command(&mut proxy, "start recording", vec![])),
        "ok"
    );
    talk(&a, a_to_relay, &bob, 0xA, 1, 10);
    assert_eq!(
        result(&command(
            &mut proxy,
            "stop recording",
            vec![("flags", flags(&["pause"]))]
        )),
        "ok"
    );
    talk(&a, a_to_relay, &bob, 0xA, 11, 10);
    assert_eq!(
        result(&command(&mut proxy, "start recording", vec![])),
        "ok"
    );
    talk(&a, a_to_relay, &bob, 0xA, 21, 10);
    assert_eq!(result(&command(&mut proxy, "stop recording", vec![])), "ok");
    let json = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "pcap"))
        .expect("a pcap")
        .with_extension("json");
    let metadata: serde_json::Value = serde_json::from_str(&wait_for(&json)).expect("JSON");
    if tshark_present() {
        let pcap = json.with_extension("pcap");
        let streams = tshark_rtp_streams(&pcap, 20_000).expect("tshark");
        // Twenty recorded, ten skipped while paused: tshark sees the gap.
        assert_eq!(streams.len(), 1, "{streams:?}");
        assert_eq!(streams[0].packets, 20, "{streams:?} {metadata}");
        assert_eq!(streams[0].lost, 10, "{streams:?}");
    }
    // An unknown call is an error.
    let unknown = proxy.call(&request(vec![
        ("command", text("start recording")),
        ("call-id", text("no-such-call")),
    ]));
    assert!(reason(&unknown).contains("not found"), "{unknown:?}");

    // A relay without a recording directory refuses, saying why; the call
    // goes on.
    let (_plain, ng, _) = common::ng::relay_with_ng();
    let mut plain = Proxy::new(ng);
    let offered = plain.call(&request(vec![
        ("command", text("offer")),
        ("call-id", text("unrecorded")),
        ("from-tag", text("a-tag")),
        ("sdp", text(body("alice", a.addr(), ""))),
        ("flags", flags(&["record-call"])),
    ]));
    assert_eq!(result(&offered), "ok");
    let warning = baton_control::ng::wire::get_str(&offered, "warning").unwrap_or_default();
    assert!(warning.contains("recording-dir"), "{offered:?}");
    // The key form, as Kamailio's module sends `record-call=yes`.
    let keyed = plain.call(&request(vec![
        ("command", text("offer")),
        ("call-id", text("unrecorded-2")),
        ("from-tag", text("a-tag")),
        ("sdp", text(body("alice", a.addr(), ""))),
        ("record-call", text("yes")),
    ]));
    assert_eq!(result(&keyed), "ok", "{keyed:?}");
    assert!(
        baton_control::ng::wire::get_str(&keyed, "warning")
            .is_some_and(|w| w.contains("recording-dir")),
        "{keyed:?}"
    );
    let refused = plain.call(&request(vec![
        ("command", text("start recording")),
        ("call-id", text("unrecorded")),
    ]));
    assert!(reason(&refused).contains("recording-dir"), "{refused:?}");
}

#[test]
fn a_recording_directory_that_cannot_be_written_stops_the_relay_at_start() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").expect("file");
    let output = std::process::Command::new(common::baton_bin())
        .args(["run", "--control", "tcp:127.0.0.1:0", "--recording-dir"])
        .arg(file.join("recordings"))
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("recording-dir") && stderr.contains("cannot be written"),
        "{stderr}"
    );
    let output = std::process::Command::new(common::baton_bin())
        .args(["run", "--control", "tcp:127.0.0.1:0", "--record-calls"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("record-calls needs recording-dir"));
}
