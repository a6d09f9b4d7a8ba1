//! The control server, through the real binary: transports, pipelining,
//! isolation between clients, tokens, limits, shutdown.

mod common;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use baton_control::{Client, ClientError};
use baton_proto::frame::{FrameCodec, encode_frame};
use baton_proto::v1::{self, request::Command, response::Result as Reply, server_message::Kind};
use common::{Relay, ctl, stdout_json};
use futures_util::StreamExt;
use nix::sys::signal::Signal;
use prost::Message;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::codec::FramedRead;

const READ_DEADLINE: Duration = Duration::from_secs(10);

fn ping(id: u64) -> v1::Request {
    v1::Request {
        id,
        command: Some(Command::Ping(v1::PingRequest {})),
    }
}

/// Reads server messages until the connection closes (bounded in time).
async fn read_until_closed<R: AsyncRead + Unpin>(reader: R) -> Vec<v1::ServerMessage> {
    let mut frames = FramedRead::new(reader, FrameCodec::default());
    let mut messages = Vec::new();
    loop {
        match tokio::time::timeout(READ_DEADLINE, frames.next()).await {
            Err(_) => panic!("connection not closed in time; got {messages:?}"),
            Ok(None | Some(Err(_))) => return messages,
            Ok(Some(Ok(frame))) => {
                messages.push(v1::ServerMessage::decode(frame).expect("valid server message"));
            }
        }
    }
}

fn error_of(message: &v1::ServerMessage) -> Option<(u64, v1::Code)> {
    match &message.kind {
        Some(Kind::Response(v1::Response {
            id,
            result: Some(Reply::Error(error)),
        })) => Some((*id, error.code())),
        _ => None,
    }
}

#[tokio::test]
async fn ping_over_tcp_and_unix() {
    let relay = Relay::start(&[]);
    for addr in [relay.tcp_addr(), relay.unix_addr()] {
        let client = Client::connect(&addr, None).await.expect("connect");
        let reply = client.call(Command::Ping(v1::PingRequest {})).await;
        assert!(
            matches!(&reply, Ok(Reply::Ping(pong)) if pong.version == env!("CARGO_PKG_VERSION")),
            "{addr}: {reply:?}"
        );
    }
}

#[tokio::test]
async fn unix_socket_is_private_by_default_and_mode_is_configurable() {
    let relay = Relay::start(&[]);
    let mode = std::fs::metadata(&relay.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let shared = Relay::start(&["--control-socket-mode", "0660"]);
    let mode = std::fs::metadata(&shared.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);
}

#[tokio::test]
async fn pipelined_requests_are_all_answered_by_id() {
    let relay = Relay::start(&[]);
    let stream = TcpStream::connect(relay.tcp_socket_addr())
        .await
        .expect("connect");
    let (reader, mut writer) = stream.into_split();
    // 200 requests in one write, ids deliberately not in order.
    let ids: Vec<u64> = (0..200u64).map(|i| 1 + (i * 7919) % 1000).collect();
    let mut bytes = Vec::new();
    for &id in &ids {
        bytes.extend_from_slice(&encode_frame(&ping(id)));
    }
    writer.write_all(&bytes).await.expect("write");
    let mut frames = FramedRead::new(reader, FrameCodec::default());
    let mut answered = HashSet::new();
    while answered.len() < ids.len() {
        let frame = tokio::time::timeout(READ_DEADLINE, frames.next())
            .await
            .expect("answers in time")
            .expect("connection open")
            .expect("valid frame");
        match v1::ServerMessage::decode(frame).expect("message").kind {
            Some(Kind::Response(v1::Response {
                id,
                result: Some(Reply::Ping(_)),
            })) => assert!(answered.insert(id), "id {id} answered twice"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(answered, ids.into_iter().collect::<HashSet<_>>());
}

#[tokio::test]
async fn many_clients_at_once_each_get_their_own_answers() {
    let relay = Relay::start(&[]);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let addr = if i % 2 == 0 {
            relay.tcp_addr()
        } else {
            relay.unix_addr()
        };
        tasks.push(tokio::spawn(async move {
            let client = Client::connect(&addr, None).await.expect("connect");
            // Many requests in flight on one connection at once.
            let calls = (0..50).map(|_| client.call(Command::Ping(v1::PingRequest {})));
            let replies = futures_util::future::join_all(calls).await;
            replies
                .iter()
                .filter(|r| matches!(r, Ok(Reply::Ping(_))))
                .count()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("task"), 50);
    }
    let stats = relay
        .client()
        .await
        .call(Command::GetStats(v1::GetStatsRequest {}))
        .await;
    let Ok(Reply::GetStats(stats)) = stats else {
        panic!("{stats:?}")
    };
    assert!(stats.control_requests >= 24 * 50, "{stats:?}");
}

#[tokio::test]
async fn garbage_client_is_disconnected_while_another_keeps_working() {
    let relay = Relay::start(&[]);
    let good = relay.client().await;
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0xff; 64][..],
        &[0, 0xff, 0xff, 0xff, 0xff, 1, 2, 3][..],
    ] {
        let mut bad = UnixStream::connect(&relay.socket).await.expect("connect");
        bad.write_all(garbage).await.expect("write");
        let (reader, _writer) = bad.into_split();
        let messages = read_until_closed(reader).await;
        let (id, code) = messages
            .first()
            .and_then(error_of)
            .expect("an error before closing");
        assert_eq!(id, 0);
        assert!(
            matches!(
                code,
                v1::Code::InvalidArgument | v1::Code::ResourceExhausted
            ),
            "{code:?}"
        );
        let reply = good.call(Command::Ping(v1::PingRequest {})).await;
        assert!(matches!(reply, Ok(Reply::Ping(_))), "{reply:?}");
    }
}

#[tokio::test]
async fn oversize_frame_is_refused_from_its_header() {
    let relay = Relay::start(&["--max-frame-bytes", "4096"]);
    let mut stream = UnixStream::connect(&relay.socket).await.expect("connect");
    // Announce 4097 bytes and send only the header: the relay must not wait.
    stream
        .write_all(&[0, 0, 0, 0x10, 0x01])
        .await
        .expect("write");
    let (reader, _writer) = stream.into_split();
    let messages = read_until_closed(reader).await;
    assert_eq!(
        messages.first().and_then(error_of),
        Some((0, v1::Code::ResourceExhausted))
    );
}

#[tokio::test]
async fn undecodable_request_gets_an_error_and_the_connection_goes_on() {
    let relay = Relay::start(&[]);
    let stream = UnixStream::connect(&relay.socket).await.expect("connect");
    let (reader, mut writer) = stream.into_split();
    let mut bytes = vec![0, 0, 0, 0, 3, 0xff, 0xff, 0xff];
    // A request with no command (as from a newer client), then a valid one.
    bytes.extend_from_slice(&encode_frame(&v1::Request {
        id: 5,
        command: None,
    }));
    bytes.extend_from_slice(&encode_frame(&ping(6)));
    writer.write_all(&bytes).await.expect("write");
    let mut frames = FramedRead::new(reader, FrameCodec::default());
    let mut seen = Vec::new();
    for _ in 0..3 {
        let frame = tokio::time::timeout(READ_DEADLINE, frames.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("frame");
        let message = v1::ServerMessage::decode(frame).expect("message");
        seen.push(match error_of(&message) {
            Some((id, code)) => (id, code),
            None => (6, v1::Code::Ok),
        });
    }
    seen.sort_by_key(|(id, _)| *id);
    assert_eq!(
        seen,
        [
            (0, v1::Code::InvalidArgument),
            (5, v1::Code::Unimplemented),
            (6, v1::Code::Ok)
        ]
    );
}

const TOKEN: &str = "correct-horse-battery-staple";

#[tokio::test]
async fn tcp_clients_must_present_the_token_first() {
    let relay = Relay::start(&["--control-token", TOKEN]);

    // No token: the first request is refused and the connection closed.
    let mut stream = TcpStream::connect(relay.tcp_socket_addr())
        .await
        .expect("connect");
    stream
        .write_all(&encode_frame(&ping(1)))
        .await
        .expect("write");
    let messages = read_until_closed(stream).await;
    assert_eq!(
        messages.first().and_then(error_of),
        Some((1, v1::Code::Unauthenticated))
    );

    // Wrong token.
    let wrong = Client::connect(&relay.tcp_addr(), Some("not-the-right-token-at-all")).await;
    assert!(
        matches!(&wrong, Err(ClientError::Status(e)) if e.code() == v1::Code::Unauthenticated),
        "{:?}",
        wrong.err()
    );

    // Right token.
    let client = Client::connect(&relay.tcp_addr(), Some(TOKEN))
        .await
        .expect("authenticated");
    let reply = client.call(Command::Ping(v1::PingRequest {})).await;
    assert!(matches!(reply, Ok(Reply::Ping(_))), "{reply:?}");

    // The Unix socket is protected by its file mode and needs no token.
    let reply = relay
        .client()
        .await
        .call(Command::Ping(v1::PingRequest {}))
        .await;
    assert!(matches!(reply, Ok(Reply::Ping(_))), "{reply:?}");

    // baton ctl: refused with exit 1 and the code, accepted with --token.
    let addr = relay.tcp_addr().to_string();
    let refused = ctl(&addr, &["ping"]);
    assert_eq!(refused.status.code(), Some(1));
    let error: serde_json::Value = serde_json::from_slice(&refused.stderr).expect("json error");
    assert_eq!(error["code"], "UNAUTHENTICATED");
    let accepted = ctl(&addr, &["--token", TOKEN, "ping"]);
    assert_eq!(stdout_json(&accepted)["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn non_loopback_control_address_needs_a_token() {
    // Refused at configuration time, before anything is bound.
    let output = std::process::Command::new(common::baton_bin())
        .args(["run", "--control", "tcp:0.0.0.0:0"])
        .env_remove("BATON_CONTROL_TOKEN")
        .output()
        .expect("run");
    // Configuration: exit 2.
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not loopback"), "{stderr}");
}

#[test]
fn bad_configuration_is_one_clear_line() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("baton.toml");
    std::fs::write(
        &config,
        "control = [\"unix:/tmp/x.sock\"]\nmax-frame-bytez = 5\n",
    )
    .expect("write");
    for args in [
        vec!["run", "--config", config.to_str().expect("utf-8")],
        vec!["run", "--control", "tcp:127.0.0.1"],
        vec!["run", "--control-socket-mode", "999"],
        vec!["run", "--config", "/nonexistent/baton.toml"],
    ] {
        let output = std::process::Command::new(common::baton_bin())
            .args(&args)
            .output()
            .expect("run");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("baton: "), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn config_file_is_read_and_flags_override_it() {
    let dir = tempfile::tempdir().expect("dir");
    let socket = dir.path().join("from-file.sock");
    let config = dir.path().join("baton.toml");
    std::fs::write(
        &config,
        format!(
            "control = [\"unix:{}\"]\ncontrol-socket-mode = \"0640\"\n",
            socket.display()
        ),
    )
    .expect("write");
    let mut child = std::process::Command::new(common::baton_bin())
        .args(["run", "--config", config.to_str().expect("utf-8")])
        .args(["--control-socket-mode", "0660"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + common::PROCESS_DEADLINE;
    while !common::path_exists(&socket) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mode = std::fs::metadata(&socket).map(|m| m.permissions().mode() & 0o777);
    common::signal(&child, Signal::SIGTERM);
    assert!(common::wait_bounded(&mut child).success());
    assert_eq!(mode.expect("socket created from the config file"), 0o660);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_tells_subscribers_exits_zero_and_removes_the_socket() {
    let mut relay = Relay::start(&[]);
    let subscriber = relay.client().await;
    subscriber.subscribe().await.expect("subscribe");
    let status = tokio::task::block_in_place(|| relay.terminate());
    assert!(status.success(), "exit status {status}");
    assert!(
        !common::path_exists(&relay.socket),
        "socket file left behind"
    );
    let event = tokio::time::timeout(READ_DEADLINE, subscriber.next_event())
        .await
        .expect("event in time")
        .expect("an event before the close");
    assert!(
        matches!(&event.kind, Some(v1::event::Kind::ShuttingDown(s)) if s.reason == "SIGTERM"),
        "{event:?}"
    );
    assert!(event.sequence >= 1 && event.unix_time_ms > 0);
}

#[test]
fn stale_socket_is_replaced_but_a_live_one_is_not_stolen() {
    let first = Relay::start(&[]);
    // A second relay on the same live socket refuses to start.
    let output = std::process::Command::new(common::baton_bin())
        .args(["run", "--control"])
        .arg(format!("unix:{}", first.socket.display()))
        .output()
        .expect("run");
    // Configuration can fix it (another path): exit 2.
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("in use"));
    assert!(
        first.ctl(&["ping"]).status.success(),
        "first relay still serves"
    );

    // SIGKILL leaves the socket file behind; a new relay replaces it.
    let socket = first.socket.clone();
    let dir = tempfile::tempdir().expect("dir");
    let kept = dir.path().join("kept.sock");
    let mut first = first;
    first.child.kill().expect("kill");
    first.child.wait().expect("wait");
    assert!(
        common::path_exists(&socket),
        "SIGKILL leaves the socket file"
    );
    std::fs::rename(&socket, &kept).expect("move the stale socket aside");
    let mut second = std::process::Command::new(common::baton_bin())
        .args(["run", "--control"])
        .arg(format!("unix:{}", kept.display()))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let addr = format!("unix:{}", kept.display());
    let deadline = std::time::Instant::now() + common::PROCESS_DEADLINE;
    let mut answered = false;
    while !answered && std::time::Instant::now() < deadline {
        answered = ctl(&addr, &["ping"]).status.success();
        std::thread::sleep(Duration::from_millis(50));
    }
    common::signal(&second, Signal::SIGTERM);
    assert!(common::wait_bounded(&mut second).success());
    assert!(
        answered,
        "the relay replaced the stale socket and serves on it"
    );
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_with_a_reason() {
    let relay = Relay::start(&["--max-control-connections", "2"]);
    // The readiness probe's connection may still hold a slot for a moment:
    // wait until it has gone.
    let probe = relay.client().await;
    let deadline = std::time::Instant::now() + READ_DEADLINE;
    loop {
        let reply = probe.call(Command::GetStats(v1::GetStatsRequest {})).await;
        if matches!(&reply, Ok(Reply::GetStats(stats)) if stats.control_connections == 1) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "probe connection never closed: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(probe);
    let tcp_client = || async {
        Client::connect(&relay.tcp_addr(), None)
            .await
            .expect("connect over TCP")
    };
    // Two TCP clients take the two shared slots (waiting for the probe's to
    // come back).
    let first = tcp_client().await;
    let second = loop {
        let client = tcp_client().await;
        if client.call(Command::Ping(v1::PingRequest {})).await.is_ok() {
            break client;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "probe slot never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for client in [&first, &second] {
        let reply = client.call(Command::Ping(v1::PingRequest {})).await;
        assert!(matches!(reply, Ok(Reply::Ping(_))), "{reply:?}");
    }
    // Issue 14: TCP clients filling every slot cannot lock the proxy's
    // Unix-socket client out; it has slots of its own.
    let local = relay.client().await;
    let refused = || async {
        match local.call(Command::GetStats(v1::GetStatsRequest {})).await {
            Ok(Reply::GetStats(stats)) => {
                assert_eq!(stats.control_connections, 3);
                stats
                    .refusals
                    .get("control_connection_limit")
                    .copied()
                    .unwrap_or(0)
            }
            other => panic!("the Unix client was not served: {other:?}"),
        }
    };
    // The loop above may have been refused while the probe was leaving.
    let refused_before = refused().await;
    let third = TcpStream::connect(relay.tcp_socket_addr())
        .await
        .expect("connect");
    let messages = read_until_closed(third).await;
    assert_eq!(
        messages.first().and_then(error_of),
        Some((0, v1::Code::ResourceExhausted))
    );
    assert_eq!(
        refused().await,
        refused_before + 1,
        "the refusal is counted"
    );
    for client in [&first, &second] {
        let reply = client.call(Command::Ping(v1::PingRequest {})).await;
        assert!(matches!(reply, Ok(Reply::Ping(_))), "{reply:?}");
    }
    drop(first);
    // The slot is free again once a client leaves.
    let deadline = std::time::Instant::now() + READ_DEADLINE;
    loop {
        let client = tcp_client().await;
        if client.call(Command::Ping(v1::PingRequest {})).await.is_ok() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn ctl_prints_json_and_uses_exit_codes() {
    let relay = Relay::start(&[]);
    let stats = stdout_json(&relay.ctl(&["stats"]));
    assert_eq!(stats["version"], env!("CARGO_PKG_VERSION"));
    assert!(stats.get("uptime_seconds").is_some(), "{stats}");

    let unreachable = ctl("unix:/nonexistent/baton.sock", &["ping"]);
    assert_eq!(unreachable.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot connect"));

    let bad_addr = ctl("tcp:nowhere", &["ping"]);
    assert_eq!(bad_addr.status.code(), Some(2));
}

#[test]
fn ctl_events_prints_one_json_object_per_line() {
    let mut relay = Relay::start(&[]);
    let mut events = std::process::Command::new(common::baton_bin())
        .args(["ctl", "--control"])
        .arg(relay.unix_addr().to_string())
        .arg("events")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ctl events");
    // Wait until the subscription is registered, then stop the relay.
    let deadline = std::time::Instant::now() + common::PROCESS_DEADLINE;
    loop {
        let stats = stdout_json(&relay.ctl(&["stats"]));
        if stats["subscribers"] == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never subscribed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(relay.terminate().success());
    let status = common::wait_bounded(&mut events);
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut events.stdout.take().expect("stdout"), &mut stdout)
        .expect("read");
    assert!(
        status.success(),
        "ctl events exits 0 after the relay's shutdown notice"
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert_eq!(lines[0]["shutting_down"]["reason"], "SIGTERM");
}

/// Logs written to a file (or the journal) carry no terminal colour codes.
#[test]
fn logs_to_a_file_have_no_colour_escapes() {
    let mut relay = Relay::start(&[]);
    let _ = relay.terminate();
    let log = relay.stderr();
    assert!(log.contains("baton ready"), "{log}");
    assert!(!log.contains('\u{1b}'), "escape codes in the log:\n{log}");
    // Field values are printed as values, not as Rust debug forms.
    let ready = log
        .lines()
        .find(|l| l.contains("baton ready"))
        .expect("the ready line");
    assert!(
        !ready.contains("Some(") && !ready.contains("[\"") && ready.contains("ng=off"),
        "{ready}"
    );
}

/// A media IP that is not this host's is refused at start (exit 2, naming
/// the key and the fix), not accepted and then failing every call.
#[test]
fn a_media_ip_not_on_this_host_is_refused_at_start() {
    let output = std::process::Command::new(common::baton_bin())
        .args([
            "run",
            "--control",
            "tcp:127.0.0.1:0",
            "--media-ip",
            "192.0.2.77",
        ])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("media-ip 192.0.2.77 cannot be bound") && stderr.contains("advertise-ip"),
        "{stderr}"
    );
    assert!(!stderr.contains("ready"), "{stderr}");
}

/// Issue 24: `ctl create` without `--aor`/`--gruu` (a call that will never
/// be handed off) relays like any other; the relay starts with the
/// session timeouts off (`0`) and rtpengine's `listen-ng` form (IP:PORT,
/// UDP), and refuses a bare port naming the form to write.
#[test]
fn a_call_needs_no_user_and_rtpengine_habits_are_understood() {
    let ng_port = {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.local_addr().expect("addr").port()
    };
    let relay = common::Relay::start(&[
        "--media-timeout",
        "0",
        "--setup-timeout",
        "0",
        "--listen-ng",
        &format!("127.0.0.1:{ng_port}"),
    ]);
    let created = relay.ctl(&[
        "create",
        "--call-id",
        "no-user",
        "--from-tag",
        "f",
        "--stream",
        "audio:0",
    ]);
    assert!(created.status.success(), "{created:?}");
    let report =
        common::stdout_json(&relay.ctl(&["get", "--call-id", "no-user", "--from-tag", "f"]));
    assert_eq!(report["session"]["aor"], "", "{report}");
    // The ng listener took rtpengine's form as UDP: a ping is answered.
    let mut proxy = common::ng::Proxy::new(format!("127.0.0.1:{ng_port}").parse().expect("addr"));
    let pong = proxy.call(&common::ng::request(vec![(
        "command",
        common::ng::text("ping"),
    )]));
    assert_eq!(
        pong.get(b"result".as_slice()).map(|v| format!("{v:?}")),
        Some(format!(
            "{:?}",
            serde_bencode::value::Value::Bytes(b"pong".to_vec())
        ))
    );
    let bare = std::process::Command::new(common::baton_bin())
        .args(["run", "--control", "tcp:127.0.0.1:0", "--listen-ng", "2299"])
        .output()
        .expect("run");
    assert_eq!(bare.status.code(), Some(2), "{bare:?}");
    let stderr = String::from_utf8_lossy(&bare.stderr);
    assert!(stderr.contains("udp:127.0.0.1:2299"), "{stderr}");
}

fn ctl_create(relay: &Relay, call_id: &str) -> std::process::Output {
    relay.ctl(&[
        "create",
        "--call-id",
        call_id,
        "--from-tag",
        "f",
        "--stream",
        "audio:0",
    ])
}

/// Issue 24: SIGHUP reloads what can change while calls run — the log
/// filter, the session limit, the timeouts (live sessions included) — names
/// what needs a restart (and record-calls without a recording-dir), and
/// keeps the running configuration when the file does not load. The calls
/// and the control socket stay throughout.
#[test]
fn sighup_reloads_what_can_change_and_names_what_needs_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("baton.toml");
    std::fs::write(
        &file,
        "max-sessions = 1\nsetup-timeout = 600\nlog-level = \"warn\"\n",
    )
    .expect("write");
    let file_arg = file.display().to_string();
    let relay = Relay::start_logging(&["--config", &file_arg], None);
    assert!(ctl_create(&relay, "before-reload").status.success());
    let refused = ctl_create(&relay, "over-the-limit");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("RESOURCE_EXHAUSTED"),
        "{refused:?}"
    );
    // log-level = "warn": the info lines are not written.
    assert!(
        !relay.stderr().contains("baton ready"),
        "{}",
        relay.stderr()
    );

    std::fs::write(
        &file,
        "max-sessions = 5\nsetup-timeout = 1\nlog-level = \"info\"\nports = \"40000-40999\"\n\
         record-calls = true\n",
    )
    .expect("rewrite");
    common::signal(&relay.child, Signal::SIGHUP);
    assert!(
        relay.wait_for_log("configuration reloaded"),
        "{}",
        relay.stderr()
    );
    let log = relay.stderr();
    let reloaded = log
        .lines()
        .find(|l| l.contains("configuration reloaded"))
        .expect("the line");
    for key in ["log-level", "timeouts", "max-sessions"] {
        assert!(reloaded.contains(key), "{key} applied: {reloaded}");
    }
    assert!(
        log.lines()
            .any(|l| l.contains("key=ports") && l.contains("next restart")),
        "{log}"
    );
    // record-calls without the recorder recording-dir starts with the
    // relay: said, not silently dropped nor reported as applied.
    assert!(!reloaded.contains("record-calls"), "{reloaded}");
    assert!(
        log.lines().any(|l| l.contains("key=record-calls")
            && l.contains("needs recording-dir")
            && l.contains("next restart")),
        "{log}"
    );
    // The new limit is in force.
    assert!(ctl_create(&relay, "after-reload").status.success());
    // The new setup timeout applies to the session created before it.
    assert!(
        relay.wait_for_line(|l| l.contains("before-reload") && l.contains("reason=setup_timeout")),
        "{}",
        relay.stderr()
    );

    // A file that does not load changes nothing, and the relay goes on.
    std::fs::write(&file, "max-sessions = \"many\"\n").expect("rewrite");
    common::signal(&relay.child, Signal::SIGHUP);
    assert!(
        relay.wait_for_log("configuration not reloaded"),
        "{}",
        relay.stderr()
    );
    let stats = stdout_json(&relay.ctl(&["stats"]));
    assert_eq!(stats["version"], env!("CARGO_PKG_VERSION"));
    let mut relay = relay;
    assert!(relay.terminate().success());
}

/// Issue 24: a drain refuses new calls — `UNAVAILABLE` natively, `load
/// limit` over ng to a proxy that supports it, an error otherwise — while
/// the live call goes on (re-offers, media), pings still answer `pong`,
/// and the relay exits 0 by itself when the last call is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_refuses_new_calls_keeps_live_ones_and_exits_when_the_last_ends() {
    let ng_port = common::free_udp_port();
    let ng_arg = format!("udp:127.0.0.1:{ng_port}");
    let ng: std::net::SocketAddr = format!("127.0.0.1:{ng_port}").parse().expect("addr");
    let mut relay = Relay::start(&["--listen-ng", &ng_arg]);
    let subscriber = relay.client().await;
    subscriber.subscribe().await.expect("subscribe");
    let mut call = tokio::task::block_in_place(|| common::ng::ng_call(ng, "live-call", vec![]));

    // `drain --wait` stays until the relay has shut down: its first line is
    // the drain's state.
    let mut waiter = std::process::Command::new(common::baton_bin())
        .args(["ctl", "--control", &relay.unix_addr().to_string()])
        .args(["drain", "--deadline", "0", "--wait"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("baton ctl drain --wait");
    let mut waiter_out = std::io::BufReader::new(waiter.stdout.take().expect("stdout"));
    let mut first = String::new();
    tokio::task::block_in_place(|| {
        std::io::BufRead::read_line(&mut waiter_out, &mut first).expect("the drain's state")
    });
    let drained: serde_json::Value = serde_json::from_str(&first).expect("JSON");
    assert_eq!(drained["draining"], true, "{drained}");
    assert_eq!(drained["sessions"], 1, "{drained}");
    assert_eq!(drained["deadline_unix_ms"], "0", "no deadline: {drained}");
    let stats = stdout_json(&tokio::task::block_in_place(|| relay.ctl(&["stats"])));
    assert_eq!(stats["draining"], true, "{stats}");

    tokio::task::block_in_place(|| {
        let refused = ctl_create(&relay, "new-native");
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("UNAVAILABLE") && stderr.contains("draining"),
            "{stderr}"
        );
        use common::ng::{body, flags, request, result, text};
        let offer = |call_id: &str, supports: bool| {
            let mut pairs = vec![
                ("command", text("offer")),
                ("call-id", text(call_id)),
                ("from-tag", text("x")),
                (
                    "sdp",
                    text(body("x", "127.0.0.1:4000".parse().expect("addr"), "")),
                ),
            ];
            if supports {
                pairs.push(("supports", flags(&["load limit"])));
            }
            request(pairs)
        };
        let limited = call.proxy.call(&offer("new-ng", true));
        assert_eq!(result(&limited), "load limit", "{limited:?}");
        // A proxy that does not say it supports `load limit` gets the
        // session-limit reason, on which older ones fail over too.
        let plain = call.proxy.call(&offer("new-ng-2", false));
        assert_eq!(common::ng::reason(&plain), "Parallel session limit reached");
        let pong = call.proxy.call(&request(vec![("command", text("ping"))]));
        assert_eq!(result(&pong), "pong");
        // The live call: a re-offer is served, media flows.
        let reoffer = call.proxy.call(&request(vec![
            ("command", text("offer")),
            ("call-id", text("live-call")),
            ("from-tag", text("a-tag")),
            ("to-tag", text("bob-tag")),
            ("sdp", text(body("alice-a", call.a.addr(), ""))),
        ]));
        assert_eq!(result(&reoffer), "ok", "{reoffer:?}");
        call.a.send(
            &call.a_to_relay.to_string(),
            &common::media::rtp(8, 1, 160, 0x1234, &[0u8; 160]),
        );
        let (_, from) = call.bob.recv();
        assert_eq!(from, call.bob_to_relay);
        let deleted = call.proxy.call(&request(vec![
            ("command", text("delete")),
            ("call-id", text("live-call")),
            ("from-tag", text("a-tag")),
        ]));
        assert_eq!(result(&deleted), "ok", "{deleted:?}");
    });
    // The last call ended: the relay exits by itself, cleanly, and the
    // waiting `drain --wait` with it.
    let status = tokio::task::block_in_place(|| common::wait_bounded(&mut relay.child));
    let waited = tokio::task::block_in_place(|| common::wait_bounded(&mut waiter));
    assert!(waited.success(), "drain --wait: {waited}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut waiter_out, &mut rest).expect("read");
    assert!(rest.contains(r#""shut_down":"drained""#), "{rest}");
    assert!(status.success(), "exit status {status}: {}", relay.stderr());
    assert!(
        relay.stderr().contains("reason=drained"),
        "{}",
        relay.stderr()
    );
    let mut drain_events = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(READ_DEADLINE, subscriber.next_event()).await {
        if let Some(v1::event::Kind::Draining(drain)) = event.kind {
            drain_events.push((drain.draining, drain.sessions));
        }
    }
    assert_eq!(drain_events, vec![(true, 1)]);
}

/// Issue 24: `ctl drain --refuse-ng-ping` makes ng pings fail (a proxy
/// that pings marks the relay disabled); `--cancel` takes the relay back
/// into service; SIGUSR1 drains with `drain-timeout`, whose deadline ends
/// the calls left (each with its final statistics) and the relay exits 0.
#[test]
fn a_drain_can_refuse_pings_be_cancelled_and_its_deadline_ends_the_calls_left() {
    let ng_port = common::free_udp_port();
    let ng_arg = format!("udp:127.0.0.1:{ng_port}");
    let ng: std::net::SocketAddr = format!("127.0.0.1:{ng_port}").parse().expect("addr");
    let mut relay = Relay::start(&["--listen-ng", &ng_arg, "--drain-timeout", "1"]);
    let mut proxy = common::ng::Proxy::new(ng);
    let ping = || common::ng::request(vec![("command", common::ng::text("ping"))]);
    assert!(ctl_create(&relay, "first").status.success());

    let drained = stdout_json(&relay.ctl(&["drain", "--deadline", "600", "--refuse-ng-ping"]));
    assert_ne!(drained["deadline_unix_ms"], "0", "{drained}");
    let refused = proxy.call(&ping());
    assert!(
        common::ng::reason(&refused).contains("draining"),
        "{refused:?}"
    );

    let back = stdout_json(&relay.ctl(&["drain", "--cancel"]));
    assert_eq!(back["draining"], false, "{back}");
    assert_eq!(common::ng::result(&proxy.call(&ping())), "pong");
    assert!(ctl_create(&relay, "second").status.success());

    common::signal(&relay.child, Signal::SIGUSR1);
    let status = common::wait_bounded(&mut relay.child);
    assert!(status.success(), "exit status {status}: {}", relay.stderr());
    let log = relay.stderr();
    let ended: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("session ended") && l.contains("reason=drain_deadline"))
        .collect();
    assert_eq!(ended.len(), 2, "{log}");
    assert!(log.contains("reason=drain deadline"), "{log}");
}

/// Issue 24: every session end — a delete, the relay's shutdown — is one
/// `SessionEnded` event and one log line with the final statistics, so
/// calls driven over ng keep their figures without a query first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_session_end_is_an_event_and_a_log_line_with_its_statistics() {
    let mut relay = Relay::start(&[]);
    let subscriber = relay.client().await;
    subscriber.subscribe().await.expect("subscribe");
    for call in ["ended-by-delete", "ended-by-shutdown"] {
        let created = tokio::task::block_in_place(|| {
            relay.ctl(&[
                "create",
                "--call-id",
                call,
                "--from-tag",
                "f",
                "--stream",
                "audio:0",
            ])
        });
        assert!(created.status.success(), "{created:?}");
    }
    let deleted = tokio::task::block_in_place(|| {
        relay.ctl(&["delete", "--call-id", "ended-by-delete", "--from-tag", "f"])
    });
    assert!(deleted.status.success(), "{deleted:?}");
    let status = tokio::task::block_in_place(|| relay.terminate());
    assert!(status.success(), "exit status {status}");
    let mut ended = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(READ_DEADLINE, subscriber.next_event()).await {
        if let Some(v1::event::Kind::SessionEnded(end)) = event.kind {
            let session = end.session.expect("its final state");
            assert_eq!(session.streams.len(), 1, "with its streams' statistics");
            ended.push((session.call_id, end.reason));
        }
    }
    assert_eq!(
        ended,
        vec![
            ("ended-by-delete".to_owned(), "deleted".to_owned()),
            ("ended-by-shutdown".to_owned(), "shutdown".to_owned())
        ]
    );
    let log = relay.stderr();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("session ended"))
        .collect();
    assert_eq!(lines.len(), 2, "{log}");
    for (line, reason) in lines.iter().zip(["deleted", "shutdown"]) {
        assert!(line.contains(&format!("reason={reason}")), "{line}");
        assert!(
            line.contains("packets_in=0")
                && line.contains("jitter_ms=")
                && line.contains("handoffs=0"),
            "{line}"
        );
    }
}

/// Issue 24: a Unix control socket in a directory that does not exist is
/// bad configuration (exit 2, one line naming the directory and the fix);
/// a bind failure prints its cause once; a world-writable socket mode is
/// warned about.
#[test]
fn control_socket_mistakes_are_named_once_with_the_fix() {
    let missing = std::process::Command::new(common::baton_bin())
        .args([
            "run",
            "--control",
            "unix:/nonexistent-baton-dir/control.sock",
        ])
        .output()
        .expect("run");
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("/nonexistent-baton-dir does not exist")
            && stderr.contains("RuntimeDirectory"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // A port held by someone else: the OS error once.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = holder.local_addr().expect("addr");
    let busy = std::process::Command::new(common::baton_bin())
        .args(["run", "--control", &format!("tcp:{taken}")])
        .output()
        .expect("run");
    assert_eq!(busy.status.code(), Some(2), "configuration can fix it");
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert_eq!(stderr.matches("in use").count(), 1, "{stderr}");
    assert!(stderr.contains("choose another port"), "{stderr}");
    // The same for an ng or metrics listener: the key, the address, the fix.
    let udp_holder = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let udp_taken = udp_holder.local_addr().expect("addr");
    for (flag, value, key) in [
        ("--listen-ng", format!("udp:{udp_taken}"), "listen-ng"),
        ("--metrics", taken.to_string(), "metrics"),
    ] {
        let dir = tempfile::tempdir().expect("dir");
        let output = std::process::Command::new(common::baton_bin())
            .args(["run", flag, &value, "--control"])
            .arg(format!("unix:{}/c.sock", dir.path().display()))
            .output()
            .expect("run");
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("{key} ")) && stderr.contains("choose another port"),
            "{stderr}"
        );
    }
    // 0666: warned, still runs.
    let mut relay = Relay::start(&["--control-socket-mode", "0666"]);
    let _ = relay.terminate();
    assert!(
        relay.stderr().contains("world-writable"),
        "{}",
        relay.stderr()
    );
}

/// Issue 24: a media IP that stops being the host's after start (a
/// floating address moved away) is reported as what it is —
/// FAILED_PRECONDITION naming the address, and a line in the relay's log —
/// not as RESOURCE_EXHAUSTED; over ng a new call gets rtpengine's "Ran out
/// of ports", on which the proxy tries another relay. Run in a network
/// namespace of its own, where the address can come and go.
#[test]
fn a_media_ip_that_goes_away_is_reported_as_such() {
    if !common::netns_tools_present()
        || !common::inside_namespace(
            "a_media_ip_that_goes_away_is_reported_as_such",
            "BATON_CONTROL_NETNS",
        )
    {
        return;
    }
    let ip = |args: &[&str]| {
        let status = std::process::Command::new("ip")
            .args(args)
            .status()
            .expect("ip");
        assert!(status.success(), "ip {args:?}");
    };
    // Only in this namespace, on its loopback: nothing is sent to it.
    ip(&["addr", "add", "192.0.2.77/32", "dev", "lo"]);
    let ng_port = common::free_udp_port();
    let ng: std::net::SocketAddr = format!("127.0.0.1:{ng_port}").parse().expect("addr");
    let relay = Relay::start(&[
        "--media-ip",
        "192.0.2.77",
        "--listen-ng",
        &format!("udp:127.0.0.1:{ng_port}"),
    ]);
    assert!(ctl_create(&relay, "while-it-is-here").status.success());

    ip(&["addr", "del", "192.0.2.77/32", "dev", "lo"]);
    let refused = ctl_create(&relay, "after-it-went");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("FAILED_PRECONDITION")
            && stderr.contains("192.0.2.77")
            && stderr.contains("not an address of this host"),
        "{stderr}"
    );
    let mut proxy = common::ng::Proxy::new(ng);
    use common::ng::{body, request, text};
    let offer = proxy.call(&request(vec![
        ("command", text("offer")),
        ("call-id", text("ng-after-it-went")),
        ("from-tag", text("x")),
        (
            "sdp",
            text(body("x", "127.0.0.1:4000".parse().expect("addr"), "")),
        ),
    ]));
    assert_eq!(common::ng::reason(&offer), "Ran out of ports");
    assert!(
        relay.wait_for_log("is not an address of this host any more"),
        "{}",
        relay.stderr()
    );
    let mut relay = relay;
    assert!(relay.terminate().success());
}
