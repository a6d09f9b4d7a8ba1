//! `/metrics` scraped during a call and a transfer: the counters move as
//! they should. And `baton ctl top --once`.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use baton_proto::v1::{self, request::Command, response::Result as Reply};
use common::Relay;
use common::media::{Peer, rtp};
use common::metrics::{scrape, scrape_text};

const AOR: &str = "sip:alice@example.com";
const GRUU_A: &str = "sip:alice@example.com;gr=urn:uuid:00000000-0000-0000-0000-00000000000a";
const GRUU_B: &str = "sip:alice@example.com;gr=urn:uuid:00000000-0000-0000-0000-00000000000b";

/// The shipped Prometheus alert rules and Grafana dashboard.
const ALERT_RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/contrib/prometheus/baton-alerts.yml"
);
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/contrib/grafana/baton-dashboard.json"
);

fn value(samples: &HashMap<String, f64>, name: &str) -> f64 {
    *samples
        .get(name)
        .unwrap_or_else(|| panic!("no sample {name}; have {:?}", samples.keys()))
}

#[tokio::test]
async fn counters_move_through_a_call_and_a_transfer() {
    let port = common::free_tcp_port();
    let relay = Relay::start(&["--metrics", &format!("127.0.0.1:{port}")]);
    let before = scrape(port);
    assert_eq!(value(&before, "baton_sessions"), 0.0);
    assert_eq!(value(&before, "baton_build_info{version=\"0.1.0\"}"), 1.0);
    // Labelled counters exist at zero from the start, so dashboards and
    // alerts can name them before the first event.
    for series in [
        "baton_sessions_ended_total{reason=\"media_timeout\"}",
        "baton_sessions_ended_total{reason=\"worker_failed\"}",
        "baton_transfers_failed_total{reason=\"timeout\"}",
        "baton_refusals_total{reason=\"ng_source_not_allowed\"}",
        "baton_ng_requests_total{command=\"offer\",code=\"error\"}",
        "baton_control_requests_total{command=\"transfer\",code=\"OK\"}",
    ] {
        assert_eq!(before.get(series), Some(&0.0), "{series}");
    }

    let client = relay.client().await;
    let (device, remote, stranger) = (Peer::v4(), Peer::v4(), Peer::v4());
    let codec = v1::Codec {
        payload_type: 0,
        name: "PCMU".into(),
        clock_rate: 8000,
        ..Default::default()
    };
    let Ok(Reply::CreateSession(created)) = client
        .call(Command::CreateSession(v1::CreateSessionRequest {
            call_id: "metrics-1".into(),
            from_tag: "a".into(),
            to_tag: "r".into(),
            aor: AOR.into(),
            gruu: GRUU_A.into(),
            streams: vec![v1::StreamSpec {
                kind: "audio".into(),
                codecs: vec![codec],
                user_peer: Some(v1::Endpoint {
                    rtp: device.addr().to_string(),
                    rtcp: String::new(),
                }),
                remote_peer: Some(v1::Endpoint {
                    rtp: remote.addr().to_string(),
                    rtcp: String::new(),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }))
        .await
    else {
        panic!("create failed");
    };
    let user_addr = created.streams[0].user.clone().expect("user").rtp;
    let remote_addr = created.streams[0].remote.clone().expect("remote").rtp;
    for seq in 0..10u16 {
        device.send(&user_addr, &rtp(0, seq, u32::from(seq) * 160, 7, &[1; 160]));
        remote.recv();
    }
    for seq in 0..4u16 {
        remote.send(
            &remote_addr,
            &rtp(0, seq, u32::from(seq) * 160, 9, &[2; 160]),
        );
        device.recv();
    }
    stranger.send(&user_addr, &rtp(0, 1, 160, 66, &[6; 160]));
    // A refused transfer (another user's device) and a real one.
    let refused = client
        .call(Command::Transfer(v1::TransferRequest {
            session: Some(v1::SessionRef {
                by: Some(v1::session_ref::By::Id(created.session.clone())),
            }),
            gruu: "sip:mallory@example.com;gr=urn:uuid:1".into(),
            ..Default::default()
        }))
        .await;
    assert!(refused.is_err());
    let device_b = Peer::v4();
    let Ok(Reply::Transfer(transfer)) = client
        .call(Command::Transfer(v1::TransferRequest {
            session: Some(v1::SessionRef {
                by: Some(v1::session_ref::By::Id(created.session.clone())),
            }),
            gruu: GRUU_B.into(),
            streams: vec![v1::TransferStream {
                peer: Some(v1::Endpoint {
                    rtp: device_b.addr().to_string(),
                    rtcp: String::new(),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }))
        .await
    else {
        panic!("transfer failed");
    };
    let b_addr = transfer.streams[0].user.clone().expect("user").rtp;
    device_b.send(&b_addr, &rtp(0, 500, 80_000, 11, &[3; 160]));
    remote.recv();
    // The completion is reported by the worker; wait for the event.
    let during = (0..50)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            scrape(port)
        })
        .find(|s| s.get("baton_transfers_completed_total") == Some(&1.0))
        .expect("the transfer completed");

    assert_eq!(value(&during, "baton_sessions"), 1.0);
    assert_eq!(value(&during, "baton_sessions_created_total"), 1.0);
    assert_eq!(value(&during, "baton_transfers_started_total"), 1.0);
    assert_eq!(value(&during, "baton_transfers_refused_total"), 1.0);
    assert_eq!(
        value(&during, "baton_transfer_media_gap_seconds_count"),
        1.0
    );
    assert_eq!(
        value(
            &during,
            "baton_packets_forwarded_total{direction=\"to_remote\"}"
        ),
        11.0
    );
    assert_eq!(
        value(
            &during,
            "baton_packets_forwarded_total{direction=\"to_user\"}"
        ),
        4.0
    );
    assert_eq!(
        value(
            &during,
            "baton_forwarded_bytes_total{direction=\"to_remote\"}"
        ),
        11.0 * 172.0
    );
    assert_eq!(
        value(&during, "baton_packets_dropped_total{reason=\"stranger\"}"),
        1.0
    );
    assert_eq!(
        value(
            &during,
            "baton_control_requests_total{command=\"create_session\",code=\"OK\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &during,
            "baton_control_requests_total{command=\"transfer\",code=\"PERMISSION_DENIED\"}"
        ),
        1.0
    );
    assert!(value(&during, "baton_relay_latency_seconds_count") >= 0.0);
    let workers: f64 = during
        .iter()
        .filter(|(k, _)| k.starts_with("baton_worker_sessions{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(workers, 1.0);
    assert!(
        during
            .keys()
            .any(|k| k.starts_with("baton_worker_cpu_seconds_total{worker=")),
        "per-worker CPU time"
    );
    let in_use = value(
        &during,
        "baton_port_pairs{interface=\"default\",ip=\"127.0.0.1\",state=\"in_use\"}",
    );
    assert!(in_use >= 2.0, "{in_use}");

    // `ctl top` shows the same picture.
    let top = relay.ctl(&["top", "--once"]);
    assert!(top.status.success(), "{top:?}");
    let screen = String::from_utf8_lossy(&top.stdout);
    assert!(screen.contains("sessions 1"), "{screen}");
    assert!(
        screen.contains("transfers started 1   completed 1   failed 0   pending 0   refused 1"),
        "{screen}"
    );
    assert!(screen.contains(&created.session), "{screen}");
    // Its rates are measured over one interval, not left as "-".
    let rates = screen
        .lines()
        .find(|l| l.starts_with("packets/s"))
        .expect("the rates line");
    assert!(!rates.contains(" - "), "{screen}");
    assert!(screen.ends_with('\n'), "{screen:?}");

    // Ending the call.
    let deleted = client
        .call(Command::DeleteSession(v1::DeleteSessionRequest {
            session: Some(v1::SessionRef {
                by: Some(v1::session_ref::By::Id(created.session.clone())),
            }),
        }))
        .await;
    // Its final statistics count the handoff.
    let Ok(Reply::DeleteSession(deleted)) = deleted else {
        panic!("delete failed: {deleted:?}");
    };
    assert_eq!(deleted.session.expect("final state").handoffs, 1);
    let after = scrape(port);
    // Every metric the README, the docs, the alert rules and the dashboard
    // name is exported by that name.
    let mut docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    for contrib in [ALERT_RULES, DASHBOARD] {
        docs.push_str(&std::fs::read_to_string(contrib).expect("contrib file"));
    }
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/docs")).expect("docs") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push_str(&std::fs::read_to_string(&path).expect("doc"));
        }
    }
    let mut named: Vec<&str> = docs
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| {
            word.starts_with("baton_")
                && word.len() > "baton_".len()
                && word.as_bytes()["baton_".len()].is_ascii_lowercase()
        })
        // The Python client and the crates (in log filters) are not metrics.
        .filter(|word| {
            ![
                "baton_client",
                "baton_control",
                "baton_relay",
                "baton_proto",
                "baton_load",
            ]
            .contains(word)
        })
        .collect();
    named.sort_unstable();
    named.dedup();
    assert!(named.len() >= 15, "{named:?}");
    for name in named {
        let exported = after.keys().chain(during.keys()).any(|key| {
            key == name
                || key.starts_with(&format!("{name}{{"))
                || key.starts_with(&format!("{name}_bucket"))
        });
        assert!(
            exported,
            "the docs name {name}, which /metrics does not export"
        );
    }
    assert_eq!(value(&after, "baton_sessions"), 0.0);
    assert_eq!(
        value(&after, "baton_sessions_ended_total{reason=\"deleted\"}"),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "baton_port_pairs{interface=\"default\",ip=\"127.0.0.1\",state=\"in_use\"}"
        ),
        0.0
    );
}

/// Whether promtool (Debian's prometheus package) is here; without it the
/// test fails under `BATON_REQUIRE_PROMTOOL=1` (set by `.ci/run`) and skips
/// otherwise.
fn promtool_present() -> bool {
    let present = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        assert!(
            std::env::var_os("BATON_REQUIRE_PROMTOOL").is_none(),
            "BATON_REQUIRE_PROMTOOL is set but promtool is missing (apt-get install prometheus)"
        );
        eprintln!("SKIPPED: promtool (apt-get install prometheus)");
    }
    present
}

fn promtool(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut child = std::process::Command::new("promtool")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .expect("feed promtool");
    drop(input);
    child.wait_with_output().expect("promtool output")
}

/// Issue 24: the alert rules and the dashboard in contrib/ are valid for
/// Prometheus (promtool checks every expression; the rules' unit tests say
/// which alerts fire on which series), and the relay's own /metrics passes
/// promtool's lint.
#[test]
fn the_contrib_alert_rules_and_dashboard_are_valid_prometheus() {
    if !promtool_present() {
        return;
    }
    let checked = promtool(&["check", "rules", ALERT_RULES], None);
    assert!(checked.status.success(), "{checked:?}");
    let tests = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/prometheus/baton-alerts.test.yml"
    );
    let tested = promtool(&["test", "rules", tests], None);
    assert!(tested.status.success(), "{tested:?}");

    // Each dashboard query, with Grafana's variables filled in, as a
    // recording rule: `promtool check rules` parses every one.
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).expect("dashboard"))
            .expect("the dashboard is JSON");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        assert!(panel["title"].as_str().is_some_and(|t| !t.is_empty()));
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"]
                .as_str()
                .expect("an expression")
                .replace("$__rate_interval", "5m")
                .replace("$instance", ".*");
            queries += 1;
            rules.push_str(&format!(
                "      - record: dashboard:query{queries}\n        expr: {}\n",
                serde_json::Value::String(expr)
            ));
        }
    }
    assert!(queries >= 20, "{queries} queries");
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("dashboard-rules.yml");
    std::fs::write(&path, rules).expect("write");
    let parsed = promtool(&["check", "rules", &path.display().to_string()], None);
    assert!(parsed.status.success(), "{parsed:?}");

    // The exposition itself, linted.
    let port = common::free_tcp_port();
    let _relay = Relay::start(&["--metrics", &format!("127.0.0.1:{port}")]);
    let linted = promtool(&["check", "metrics"], Some(&scrape_text(port)));
    assert!(linted.status.success(), "{linted:?}");
}
