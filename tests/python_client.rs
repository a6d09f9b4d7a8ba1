//! The Python client example in scripts/ against the real binary: it must
//! stay runnable as the protocol grows. It needs protoc and the protobuf
//! Python package; without them the test says so and passes, unless
//! BATON_REQUIRE_PYTHON_CLIENT is set (CI sets it after installing them).

mod common;

use std::process::Command;

use common::Relay;

/// A Python interpreter that has the protobuf package, if any.
fn python_with_protobuf() -> Option<&'static str> {
    ["python3", "/usr/bin/python3"].into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import google.protobuf"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn protoc_present() -> bool {
    Command::new("protoc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn python_client_creates_answers_transfers_and_deletes() {
    let python = match (python_with_protobuf(), protoc_present()) {
        (Some(python), true) => python,
        (python, protoc) => {
            let missing = format!(
                "protoc {}, python3 protobuf {}",
                if protoc { "found" } else { "missing" },
                if python.is_some() { "found" } else { "missing" }
            );
            assert!(
                std::env::var_os("BATON_REQUIRE_PYTHON_CLIENT").is_none(),
                "BATON_REQUIRE_PYTHON_CLIENT is set but {missing}"
            );
            eprintln!("SKIPPED: {missing} (apt-get install protobuf-compiler python3-protobuf)");
            return;
        }
    };
    let relay = Relay::start(&[]);
    for control in [
        format!("tcp:127.0.0.1:{}", relay.tcp_port),
        format!("unix:{}", relay.socket.display()),
    ] {
        let output = Command::new(python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/baton_client.py"
            ))
            .args(["--control", &control, "demo", "--call-id"])
            .arg(format!("py-{}", control.len()))
            .output()
            .expect("run scripts/baton_client.py");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{control}: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let summary: serde_json::Value = stdout
            .lines()
            .last()
            .and_then(|line| serde_json::from_str(line).ok())
            .unwrap_or_else(|| panic!("no JSON summary: {stdout}"));
        let session = summary["session"].as_str().expect("session id");
        assert_eq!(summary["deleted"].as_str(), Some(session));
        let to_callee = summary["offer_to_callee"].as_str().expect("offer");
        assert!(to_callee.contains("o=alice-desk 2890844526"), "{to_callee}");
        assert!(
            !to_callee.contains("m=audio 49170"),
            "not rewritten: {to_callee}"
        );
        let to_caller = summary["answer_to_caller"].as_str().expect("answer");
        assert!(
            !to_caller.contains("m=audio 51372"),
            "not rewritten: {to_caller}"
        );
        let to_mobile = summary["answer_to_new_device"].as_str().expect("answer");
        let relay_port = summary["new_device_relay"]
            .as_str()
            .and_then(|a| a.rsplit(':').next())
            .expect("relay address");
        assert!(
            to_mobile.contains(&format!("m=audio {relay_port} RTP/AVP 0 96\r\n")),
            "{to_mobile}"
        );
        assert!(to_mobile.contains("a=rtcp-mux\r\n"), "{to_mobile}");
    }
}
