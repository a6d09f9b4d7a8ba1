//! `baton load` against a real relay, with handoffs under load.

mod common;

use common::Relay;

#[test]
fn load_with_handoffs_loses_nothing_and_breaks_nothing() {
    load_with_handoffs(&["--ports", "44000-44499"], &[]);
}

/// The same with the generator's calls sharing 3 sockets per side and
/// thread: many calls' media from and to one address, so the relay must
/// tell sessions apart by its own ports alone, handoffs included.
#[test]
fn load_with_shared_generator_sockets_loses_nothing() {
    load_with_handoffs(&["--ports", "44500-44999"], &["--share-sockets", "3"]);
}

/// SRTP device legs (bridged to plain remotes), each handoff to a new
/// device with its own key: the generator decrypts what it receives, and
/// the decrypted streams are as continuous as plain ones.
#[test]
fn load_with_srtp_devices_and_handoffs_loses_nothing() {
    load_with_handoffs(
        &["--ports", "45000-45499"],
        &["--srtp", "device", "--share-sockets", "3"],
    );
}

/// `baton load --control RELAY ARGS --json` run to the end: it must report
/// no problem (exit 0); its summary (the last line of stdout) and stderr.
fn load_against(relay: &Relay, args: &[&str]) -> (serde_json::Value, String) {
    let output = std::process::Command::new(common::baton_bin())
        .args(["load", "--control"])
        .arg(relay.unix_addr().to_string())
        .args(args)
        .arg("--json")
        .output()
        .expect("run baton load");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "baton load reported a problem:\n{stderr}"
    );
    let summary = serde_json::from_str(stdout.lines().last().expect("a JSON line")).expect("JSON");
    (summary, stderr)
}

/// Issue 19: `--plot` draws what the remote received from the first call
/// around its handoffs.
#[test]
fn load_draws_the_first_calls_handoffs() {
    let relay = Relay::start(&[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let plot = dir.path().join("handoffs.svg");
    let plot_arg = plot.to_string_lossy().into_owned();
    let (summary, stderr) = load_against(
        &relay,
        &[
            "--calls",
            "4",
            "--duration",
            "3",
            "--handoff-every",
            "0.4",
            "--plot",
            &plot_arg,
        ],
    );
    assert_eq!(summary["continuity_violations"], 0, "{stderr}");
    let svg = std::fs::read_to_string(&plot).expect("the plot was written");
    assert!(svg.contains("handoff 1: device 1 → device 2"), "{svg}");
    assert!(svg.matches("<circle").count() > 20, "{svg}");
}

fn load_with_handoffs(relay_args: &[&str], load_args: &[&str]) {
    let relay = Relay::start(&[relay_args, &["--workers", "2"]].concat());
    let args = [
        &[
            "--calls",
            "40",
            "--duration",
            "3",
            "--handoff-every",
            "0.1",
            "--threads",
            "2",
        ][..],
        load_args,
    ]
    .concat();
    let (summary, stderr) = load_against(&relay, &args);
    assert_eq!(summary["lost"], 0, "{stderr}");
    assert_eq!(summary["continuity_violations"], 0, "{stderr}");
    assert_eq!(summary["duplicated"], 0, "{stderr}");
    assert_eq!(summary["srtp_failed"], 0, "{stderr}");
    assert_eq!(summary["handoffs"]["failed"], 0, "{stderr}");
    let completed = summary["handoffs"]["completed"].as_u64().expect("count");
    assert!(
        completed >= 20,
        "handoffs under load: {completed}\n{stderr}"
    );
    let sent = summary["sent"].as_u64().expect("sent");
    let received = summary["received"].as_u64().expect("received");
    assert!(sent >= 40 * 2 * 100, "sent {sent}");
    // Packets an old device sends after its switch are dropped by design.
    assert!(received > sent * 9 / 10, "received {received} of {sent}");
    for key in ["p50", "p99", "p999", "max"] {
        assert!(
            summary["latency_us"][key].as_f64().is_some_and(|v| v > 0.0),
            "{key}"
        );
    }
    assert!(summary["pps"].as_f64().is_some_and(|v| v > 0.0));
    // RTCP (sender reports with a reception block, first ones spread over
    // the first 5 s) crossed the relay too.
    assert!(
        summary["rtcp_received"].as_u64().is_some_and(|n| n > 0),
        "{stderr}"
    );
    // Loopback on Linux always gives receive timestamps.
    assert_eq!(summary["latency_clock"], "kernel", "{stderr}");
}

/// Video-like calls (VP8 frames of several packets, keyframes only when
/// asked for), SRTP toward the devices, handoffs under load: every switch
/// lands on the new device's keyframe, which it sent because the relay's
/// PLI or FIR (SRTCP) reached it, and the outward streams stay continuous.
#[test]
fn video_load_with_handoffs_switches_on_keyframes() {
    let relay = Relay::start(&["--ports", "43500-43999", "--workers", "2"]);
    let (summary, stderr) = load_against(
        &relay,
        &[
            "--video",
            "--srtp",
            "device",
            // Ten calls: a debug build's SRTP and video on this machine's
            // two cores, with the generator beside it, carry them without
            // a packet late; the switches, not the load, are under test.
            "--calls",
            "10",
            "--duration",
            "3",
            "--handoff-every",
            "0.1",
            "--payload-bytes",
            "900",
        ],
    );
    assert_eq!(summary["lost"], 0, "{stderr}");
    assert_eq!(summary["continuity_violations"], 0, "{stderr}");
    assert_eq!(
        summary["violations"]["switches_off_keyframe"], 0,
        "{stderr}"
    );
    assert_eq!(summary["srtp_failed"], 0, "{stderr}");
    let completed = summary["handoffs"]["completed"].as_u64().expect("count");
    assert!(
        completed >= 15,
        "handoffs under load: {completed}\n{stderr}"
    );
    // Each new device's keyframe reached the remote, asked for by the relay
    // (the devices send none unasked).
    let video = &summary["video"];
    assert_eq!(
        video["switch_keyframes"].as_u64(),
        Some(completed),
        "{stderr}"
    );
    assert!(
        video["keyframe_requests"].as_u64().unwrap_or(0) >= completed,
        "{stderr}"
    );
    assert!(
        video["switch_to_keyframe_ms"]["p50"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0,
        "{stderr}"
    );
}

#[test]
fn direct_mode_measures_the_generator_alone() {
    let output = std::process::Command::new(common::baton_bin())
        .args([
            "load",
            "--direct",
            "--calls",
            "10",
            "--duration",
            "1",
            "--json",
        ])
        .output()
        .expect("run baton load");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("JSON")).expect("JSON");
    assert_eq!(summary["mode"], "direct");
    assert_eq!(summary["lost"], 0);
    assert_eq!(summary["received"], summary["sent"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("generator's own ceiling"));
}

#[test]
fn direct_mode_with_shared_sockets_judges_every_flow() {
    let output = std::process::Command::new(common::baton_bin())
        .args([
            "load",
            "--direct",
            "--calls",
            "30",
            "--share-sockets",
            "4",
            "--threads",
            "2",
            "--duration",
            "1",
            "--json",
        ])
        .output()
        .expect("run baton load");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("JSON")).expect("JSON");
    // 60 flows, each judged on its own although 15 calls share 4 sockets a
    // side per thread; at 50 packets/s for a second each sends about 50.
    assert_eq!(summary["flows"], 60, "{stderr}");
    assert_eq!(summary["lost"], 0, "{stderr}");
    assert_eq!(summary["continuity_violations"], 0, "{stderr}");
    assert_eq!(summary["received"], summary["sent"]);
    assert!(
        summary["sent"].as_u64().is_some_and(|n| n >= 60 * 45),
        "{stderr}"
    );
}

/// Runs `baton load --plan --duration 1 --json` on the plan `plan(a, b)`
/// writes for two loopback UDP ports that were free a moment ago; when a
/// parallel test took one before the generator bound it, again with new
/// ports (at most 5 tries). Returns the run, the plan file (its directory
/// kept) and the two addresses.
fn run_plan(
    plan: impl Fn(&str, &str) -> String,
) -> (std::process::Output, tempfile::TempPath, String, String) {
    for _ in 0..5 {
        let (a, b) = (
            format!("127.0.0.1:{}", common::free_udp_port()),
            format!("127.0.0.1:{}", common::free_udp_port()),
        );
        let file = tempfile::NamedTempFile::new().expect("plan file");
        std::fs::write(file.path(), plan(&a, &b)).expect("write");
        let path = file.into_temp_path();
        let output = std::process::Command::new(common::baton_bin())
            .args(["load", "--plan"])
            .arg(&path)
            .args(["--duration", "1", "--json"])
            .output()
            .expect("run baton load");
        if !String::from_utf8_lossy(&output.stderr).contains("Address already in use") {
            return (output, path, a, b);
        }
    }
    panic!("no two free UDP ports in 5 tries");
}

#[test]
fn plan_mode_drives_flows_from_a_file() {
    // Two flows straight between two generator sockets: the plan format
    // without a relay in between.
    let (output, plan, a, _) =
        run_plan(|a, b| format!("# from to expect\n{a} {b} {b}\n{b} {a} {a}\n"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("JSON")).expect("JSON");
    assert_eq!(summary["flows"], 2);
    assert_eq!(summary["lost"], 0);
    // A plan naming a non-loopback address is refused.
    std::fs::write(&plan, format!("{a} 192.0.2.1:9 127.0.0.1:9\n")).expect("write");
    let refused = std::process::Command::new(common::baton_bin())
        .args(["load", "--plan"])
        .arg(&plan)
        .args(["--duration", "1"])
        .output()
        .expect("run");
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a loopback"));
}

/// Plan lines carry SRTP keys: `srtp-out` encrypts what FROM sends,
/// `srtp-in` decrypts what FROM receives from TO. With the right key the
/// flow is clean; with another key every packet fails and the run says so.
#[test]
fn plan_mode_encrypts_and_decrypts_with_the_keys_of_its_lines() {
    let key = "AES_CM_128_HMAC_SHA1_80:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";
    let other = "AES_CM_128_HMAC_SHA1_80:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd";
    let run = |decrypt_with: &str| {
        let (output, ..) = run_plan(|a, b| {
            format!("{a} {b} {b} srtp-out={key}\n{b} {a} {a} srtp-in={decrypt_with}\n")
        });
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let summary: serde_json::Value =
            serde_json::from_str(stdout.lines().last().expect("JSON")).expect("JSON");
        (output.status.success(), summary)
    };
    let (clean, summary) = run(key);
    assert!(clean, "{summary}");
    assert_eq!(summary["srtp_failed"], 0);
    assert_eq!(summary["lost"], 0);
    let (clean, summary) = run(other);
    assert!(!clean, "a wrong key is a failed run: {summary}");
    assert!(
        summary["srtp_failed"].as_u64().is_some_and(|n| n >= 40),
        "{summary}"
    );
}

#[test]
fn new_webrtc_legs_connect_while_calls_flow() {
    let relay = Relay::start(&["--ports", "45500-45999", "--workers", "2"]);
    let output = std::process::Command::new(common::baton_bin())
        .args(["load", "--control"])
        .arg(relay.unix_addr().to_string())
        .args([
            "--calls",
            "20",
            "--duration",
            "3",
            "--webrtc-legs-per-second",
            "10",
            "--json",
        ])
        .output()
        .expect("run baton load");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "baton load:\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let webrtc: serde_json::Value =
        serde_json::from_str(lines[lines.len() - 2]).expect("the WebRTC line");
    let summary: serde_json::Value =
        serde_json::from_str(lines[lines.len() - 1]).expect("the summary");
    let attempted = webrtc["attempted"].as_u64().expect("count");
    assert!(attempted >= 20, "{webrtc}");
    assert_eq!(
        webrtc["connected"], attempted,
        "every leg connects: {webrtc}\n{stderr}"
    );
    assert_eq!(webrtc["failed"], 0, "{webrtc}");
    assert!(webrtc["setup_ms_p50"].as_f64().is_some_and(|ms| ms > 0.0));
    assert_eq!(summary["lost"], 0, "the calls lose nothing: {stderr}");
    assert_eq!(summary["continuity_violations"], 0, "{stderr}");
}
