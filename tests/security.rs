//! The findings of the outside security review (issue 14), each replayed
//! against the real binary as the reviewer found it: one RTCP datagram that
//! ended every call on a worker, a packet sprayer taking a pending transfer,
//! an unbounded ng listener, control slots held by unauthenticated clients,
//! and a scraper flood on the metrics listener. Each test failed before the
//! fix; RELIABILITY.md's table names them.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use baton_control::ng::wire::{self, Dict, get_str};
use baton_control::{Client, ClientError};
use baton_proto::v1::{self, request::Command, response::Result as Reply};
use common::Relay;
use common::media::{Peer, rtp};
use common::native::{by_id, endpoint, pcmu};
use serde_bencode::value::Value;

const AOR: &str = "sip:alice@example.com";
const DEVICE_A: &str = "sip:alice@example.com;gr=urn:uuid:00000000-0000-0000-0000-00000000000a";
const DEVICE_B: &str = "sip:alice@example.com;gr=urn:uuid:00000000-0000-0000-0000-00000000000b";

/// BYE + PSFB FIR of three words: 24 bytes that used to panic the `rtcp`
/// crate inside a worker.
const CRASHER: [u8; 24] = [
    0x81, 0xcb, 0, 1, 0, 0, 0x11, 0x11, 0x84, 0xce, 0, 3, 0, 0, 0x11, 0x11, 0, 0, 0x22, 0x22, 0, 0,
    0x33, 0x33,
];

/// Creates an rtcp-mux call; returns (session, user relay address, remote
/// relay address).
async fn create(
    client: &Client,
    call_id: &str,
    device: Option<SocketAddr>,
    remote: SocketAddr,
) -> (String, String, String) {
    let reply = client
        .call(Command::CreateSession(v1::CreateSessionRequest {
            call_id: call_id.into(),
            from_tag: "f".into(),
            aor: AOR.into(),
            gruu: DEVICE_A.into(),
            streams: vec![v1::StreamSpec {
                kind: "audio".into(),
                codecs: vec![pcmu()],
                rtcp_mux: true,
                user_peer: device.map(endpoint),
                remote_peer: Some(endpoint(remote)),
                ..Default::default()
            }],
            ..Default::default()
        }))
        .await;
    let Ok(Reply::CreateSession(created)) = reply else {
        panic!("create failed: {reply:?}");
    };
    let stream = &created.streams[0];
    (
        created.session.clone(),
        stream.user.as_ref().expect("user").rtp.clone(),
        stream.remote.as_ref().expect("remote").rtp.clone(),
    )
}

async fn transfer(client: &Client, request: v1::TransferRequest) -> Result<String, v1::Error> {
    match client.call(Command::Transfer(request)).await {
        Ok(Reply::Transfer(t)) => Ok(t.streams[0].user.as_ref().expect("user").rtp.clone()),
        Err(ClientError::Status(e)) => Err(e),
        other => panic!("transfer: {other:?}"),
    }
}

async fn stats(client: &Client) -> v1::GetStatsResponse {
    match client.call(Command::GetStats(v1::GetStatsRequest {})).await {
        Ok(Reply::GetStats(stats)) => stats,
        other => panic!("stats: {other:?}"),
    }
}

async fn exists(client: &Client, session: &str) -> bool {
    let reply = client
        .call(Command::GetSession(v1::GetSessionRequest {
            session: by_id(session),
        }))
        .await;
    matches!(reply, Ok(Reply::GetSession(_)))
}

/// Finding 1: one 24-byte RTCP datagram ended every call on a worker. Now
/// it is forwarded (the BYE removed) and both calls of the single worker
/// live on, toward the remote, toward the new device after a switch, and
/// from a sprayer on a leg that is still learning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rtcp_packet_cannot_end_the_calls_of_a_worker() {
    let relay = Relay::start(&["--workers", "1"]);
    let client = relay.client().await;
    let (device_a, device_b, remote) = (Peer::v4(), Peer::v4(), Peer::v4());
    let (session, user_port, remote_port) =
        create(&client, "crash-1", Some(device_a.addr()), remote.addr()).await;
    // A second call on the same (only) worker whose user leg still learns.
    let (other_remote, sprayer) = (Peer::v4(), Peer::bind("127.0.0.66"));
    let (other, other_user_port, other_remote_port) =
        create(&client, "crash-2", None, other_remote.addr()).await;

    device_a.send(&user_port, &rtp(0, 1, 160, 0xA, &[1; 160]));
    remote.recv();
    let b_port = transfer(
        &client,
        v1::TransferRequest {
            session: by_id(&session),
            gruu: DEVICE_B.into(),
            streams: vec![v1::TransferStream {
                peer: Some(endpoint(device_b.addr())),
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    .await
    .expect("transfer");
    device_b.send(&b_port, &rtp(0, 500, 9000, 0xB, &[2; 160]));
    let (switched, _) = remote.recv();
    assert_eq!(&switched[8..12], &0xAu32.to_be_bytes(), "B in A's stream");

    // Toward the remote, from the new device: the FIR arrives, no BYE.
    device_b.send(&b_port, &CRASHER);
    let (fir, _) = remote.recv();
    assert_eq!(&fir[..], &CRASHER[8..]);
    // Toward the new device, from the remote, after the switch.
    remote.send(&remote_port, &CRASHER[8..]);
    let (fir, _) = device_b.recv();
    assert_eq!(&fir[..], &CRASHER[8..]);
    // A sprayer latches the learning leg of the other call with it.
    sprayer.send(&other_user_port, &CRASHER);

    // Both calls are alive and media flows on both.
    assert!(exists(&client, &session).await);
    assert!(exists(&client, &other).await);
    device_b.send(&b_port, &rtp(0, 501, 9160, 0xB, &[3; 160]));
    remote.recv();
    other_remote.send(&other_remote_port, &rtp(0, 1, 1, 7, &[4; 160]));
    sprayer.recv();
    let stats = stats(&client).await;
    assert_eq!(stats.sessions, 2);
    assert_eq!(stats.sessions_timed_out, 0, "no session ended");
}

/// Finding 2: three in-order packets from a sprayer took a pending transfer
/// (the remote heard the attacker, A was cut off). Now a transfer needs the
/// new device's address or the IP its request came from, strangers change
/// nothing, and an unnegotiated payload type does not switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sprayer_cannot_take_a_pending_transfer() {
    let relay = Relay::start(&[]);
    let client = relay.client().await;
    let (device_a, device_b, remote) = (Peer::v4(), Peer::v4(), Peer::v4());
    let attacker = Peer::bind("127.0.0.66");
    let (session, user_port, remote_port) =
        create(&client, "hijack", Some(device_a.addr()), remote.addr()).await;
    device_a.send(&user_port, &rtp(0, 1, 160, 0xA, &[1; 160]));
    remote.recv();

    let request = |source_ip: &str| v1::TransferRequest {
        session: by_id(&session),
        gruu: DEVICE_B.into(),
        source_ip: source_ip.into(),
        ..Default::default()
    };
    // Neither an address nor an IP: refused, nothing opened.
    let refused = transfer(&client, request("")).await.expect_err("refused");
    assert_eq!(refused.code, v1::Code::InvalidArgument as i32);
    assert!(refused.message.contains("source_ip"), "{}", refused.message);
    let bad_ip = transfer(&client, request("not-an-ip\u{1b}[2J"))
        .await
        .expect_err("refused");
    assert!(!bad_ip.message.contains('\u{1b}'), "{}", bad_ip.message);

    let b_port = transfer(&client, request("127.0.0.1"))
        .await
        .expect("transfer");
    // The attacker sprays in-order RTP from another IP: nothing switches,
    // nothing reaches the remote, the remote's media reaches only A.
    for seq in 0..5 {
        attacker.send(&b_port, &rtp(0, 100 + seq, 160, 0x666, &[6; 160]));
    }
    remote.expect_silence();
    remote.send(&remote_port, &rtp(0, 1, 1, 0xF, &[7; 160]));
    device_a.recv();
    attacker.expect_silence();
    // B's comfort noise (PT 13, not negotiated) does not switch either.
    device_b.send(&b_port, &rtp(13, 40, 1, 0xB, &[0x40]));
    device_a.send(&user_port, &rtp(0, 2, 320, 0xA, &[1; 160]));
    let (still_a, _) = remote.recv();
    assert_eq!(&still_a[2..4], &2u16.to_be_bytes(), "A still talks");
    // B proves itself with three in-order packets and takes over, even
    // with the attacker interleaving its own.
    for seq in 0..3u16 {
        attacker.send(&b_port, &rtp(0, 200 + seq, 1, 0x666, &[6; 160]));
        device_b.send(&b_port, &rtp(0, 50 + seq, 160, 0xB, &[2; 160]));
    }
    let (from_b, _) = remote.recv();
    assert_eq!(&from_b[8..12], &0xAu32.to_be_bytes(), "B in A's stream");
    assert_eq!(&from_b[12..], &[2; 160], "B's payload, not the attacker's");
    remote.expect_silence();
    let stats = stats(&client).await;
    assert!(
        stats.drops.get("stranger").copied().unwrap_or(0) >= 8,
        "{:?}",
        stats.drops
    );
    assert!(stats.drops.contains_key("unknown_payload_type"));
    assert_eq!(stats.refusals.get("transfer_source_unknown"), Some(&1));
}

/// The operator's escape hatch still works, and says what it is.
#[tokio::test]
async fn unverified_transfer_sources_only_when_the_operator_allows_them() {
    let relay = Relay::start(&["--allow-unverified-transfer-source"]);
    let client = relay.client().await;
    let (device_a, remote) = (Peer::v4(), Peer::v4());
    let (session, _, _) = create(&client, "lab", Some(device_a.addr()), remote.addr()).await;
    transfer(
        &client,
        v1::TransferRequest {
            session: by_id(&session),
            gruu: DEVICE_B.into(),
            ..Default::default()
        },
    )
    .await
    .expect("allowed by the operator");
}

fn ng_call(socket: &UdpSocket, to: SocketAddr, cookie: &str, request: &Value) -> Option<Dict> {
    // As a proxy does over UDP: the same request (same cookie) again if
    // no reply came; the relay answers a retransmission from its cache.
    let mut buf = vec![0u8; 65_536];
    let mut received = None;
    for _ in 0..3 {
        socket
            .send_to(&wire::encode(cookie, request), to)
            .expect("send");
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            received = Some(n);
            break;
        }
    }
    let n = received?;
    let (echoed, body) = wire::split(&buf[..n]).expect("cookie and body");
    assert_eq!(echoed, cookie);
    Some(wire::decode(body).expect("a dictionary"))
}

fn request(pairs: Vec<(&str, Value)>) -> Value {
    Value::Dict(
        pairs
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v))
            .collect(),
    )
}

fn bytes(text: impl Into<Vec<u8>>) -> Value {
    Value::Bytes(text.into())
}

/// Finding 3: a non-loopback ng address only logged a warning. Now it is
/// refused at start-up without an allow-list.
#[test]
fn a_public_ng_address_needs_an_allow_list() {
    let output = Process::new(common::baton_bin())
        .args(["run", "--control", "unix:/nonexistent/never.sock"])
        .args(["--listen-ng", "udp:0.0.0.0:2223"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ng-allow"), "{stderr}");
}

/// Finding 3: requests from outside the allow-list are dropped and counted.
#[tokio::test]
async fn ng_requests_from_outside_the_allow_list_are_dropped_and_counted() {
    let port = common::free_udp_port();
    let ng: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let relay = Relay::start(&[
        "--listen-ng",
        &format!("udp:{ng}"),
        "--ng-allow",
        "10.0.0.0/8",
    ]);
    let proxy = UdpSocket::bind("127.0.0.1:0").expect("bind");
    proxy
        .set_read_timeout(Some(common::media::SILENCE))
        .expect("timeout");
    let ping = request(vec![("command", bytes("ping"))]);
    assert!(ng_call(&proxy, ng, "c1", &ping).is_none(), "answered");
    let client = relay.client().await;
    // The client tried three times; each try was refused and counted.
    assert_eq!(
        stats(&client).await.refusals.get("ng_source_not_allowed"),
        Some(&3)
    );
}

/// Finding 3: error replies echoed the request's input (Debug-escaped, so
/// about 6 bytes out per control byte in) and every refusal was logged with
/// the raw call-id. Now a reply quotes a short printable excerpt and
/// refusals are logged at most 10 a second.
#[tokio::test]
async fn ng_errors_and_logs_stay_small_whatever_the_request() {
    let port = common::free_udp_port();
    let ng: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let relay = Relay::start(&["--listen-ng", &format!("udp:{ng}")]);
    let proxy = UdpSocket::bind("127.0.0.1:0").expect("bind");
    proxy
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let junk = "\u{1b}".repeat(20_000);
    let started = Instant::now();
    let rounds = 300;
    for i in 0..rounds {
        let reply = ng_call(
            &proxy,
            ng,
            &format!("c{i}"),
            &request(vec![
                ("command", bytes(junk.as_str())),
                ("call-id", bytes(junk.as_str())),
            ]),
        )
        .expect("a reply");
        let reason = get_str(&reply, "error-reason").expect("an error");
        assert!(reason.len() < 120, "{} bytes: {reason}", reason.len());
        assert!(!reason.contains('\u{1b}'));
    }
    let elapsed = started.elapsed().as_secs() + 1;
    let transport = request(vec![
        ("command", bytes("offer")),
        ("call-id", bytes("c")),
        ("from-tag", bytes("f")),
        ("sdp", bytes("v=0\r\n")),
        ("transport-protocol", bytes(junk.as_str())),
    ]);
    let reply = ng_call(&proxy, ng, "t", &transport).expect("a reply");
    assert!(get_str(&reply, "error-reason").expect("error").len() < 200);
    // Let the log writer catch up, then count.
    std::thread::sleep(Duration::from_millis(200));
    let log = relay.stderr();
    let lines = log.matches("ng request refused").count() as u64;
    assert!(lines > 0);
    assert!(
        lines <= 10 * (elapsed + 1),
        "{lines} refusal lines in {elapsed} s"
    );
    assert!(
        log.len() < 400_000,
        "the log grew to {} bytes for {rounds} refused requests",
        log.len()
    );
}

/// Finding 3: a 1 MiB offer cost 1.5 s of CPU and about 95 MiB held by one
/// session. Now every SDP path has limits, refused naming the limit, with
/// nothing kept.
#[tokio::test]
async fn oversized_sdp_is_refused_naming_the_limit_and_keeps_nothing() {
    let port = common::free_udp_port();
    let ng: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let relay = Relay::start(&[
        "--listen-ng",
        &format!("udp:{ng}"),
        "--sdp-max-bytes",
        "4096",
        "--sdp-max-attributes",
        "50",
    ]);
    let client = relay.client().await;
    let head = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n";
    let audio = "m=audio 4000 RTP/AVP 0\r\n";
    let big = format!("{head}{audio}{}", "a=x-filler:0123456789\r\n".repeat(500));
    let many_media = format!("{head}{}", audio.repeat(40));
    let formats: Vec<String> = (0..200).map(|i| (i % 128).to_string()).collect();
    let many_formats = format!("{head}m=audio 4000 RTP/AVP {}\r\n", formats.join(" "));
    let many_attributes = format!("{head}{audio}{}", "a=x\r\n".repeat(51));
    // Over ng.
    let proxy = UdpSocket::bind("127.0.0.1:0").expect("bind");
    proxy
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let offer = |sdp: &str| {
        request(vec![
            ("command", bytes("offer")),
            ("call-id", bytes("big")),
            ("from-tag", bytes("f")),
            ("sdp", bytes(sdp)),
        ])
    };
    for (i, (sdp, limit)) in [
        (&big, "sdp-max-bytes"),
        (&many_media, "sdp-max-media"),
        (&many_formats, "sdp-max-formats"),
    ]
    .into_iter()
    .enumerate()
    {
        let reply = ng_call(&proxy, ng, &format!("o{i}"), &offer(sdp)).expect("reply");
        let reason = get_str(&reply, "error-reason").expect("an error");
        assert!(reason.contains(limit), "{reason}");
    }
    // Over the native protocol.
    let create = |sdp: &str| {
        Command::CreateSession(v1::CreateSessionRequest {
            call_id: "big-native".into(),
            from_tag: "f".into(),
            aor: AOR.into(),
            gruu: DEVICE_A.into(),
            sdp: sdp.into(),
            ..Default::default()
        })
    };
    for (sdp, limit) in [
        (&big, "sdp-max-bytes"),
        (&many_attributes, "sdp-max-attributes"),
    ] {
        match client.call(create(sdp)).await {
            Err(ClientError::Status(e)) => {
                assert_eq!(e.code, v1::Code::InvalidArgument as i32);
                assert!(e.message.contains(limit), "{}", e.message);
            }
            other => panic!("accepted: {other:?}"),
        }
    }
    let stats = stats(&client).await;
    assert_eq!(stats.sessions, 0, "nothing kept");
    assert_eq!(stats.refusals.get("sdp_too_large"), Some(&2));
    assert_eq!(stats.refusals.get("sdp_too_many_media"), Some(&1));
    assert_eq!(stats.refusals.get("sdp_too_many_formats"), Some(&1));
    assert_eq!(stats.refusals.get("sdp_too_many_attributes"), Some(&1));
    let ports = &stats.ports[0];
    assert_eq!(ports.free_pairs, ports.total_pairs, "no port held");
}

/// Review finding: a Call-ID, tag or URI of any length was kept in the
/// registry and written into every log line of its session. Each is now
/// refused past its limit, naming the field, over both protocols.
#[tokio::test]
async fn overlong_identifiers_are_refused_naming_the_field() {
    let port = common::free_udp_port();
    let ng: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let relay = Relay::start(&["--listen-ng", &format!("udp:{ng}")]);
    let client = relay.client().await;
    let long_id = "i".repeat(300);
    let long_uri = format!("sip:{}@example.com", "u".repeat(3000));
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    let cases = [
        ("call_id", long_id.as_str(), "f", AOR),
        ("from_tag", "c", long_id.as_str(), AOR),
        ("aor", "c", "f", long_uri.as_str()),
    ];
    for (field, call_id, from_tag, aor) in cases {
        let reply = client
            .call(Command::CreateSession(v1::CreateSessionRequest {
                call_id: call_id.into(),
                from_tag: from_tag.into(),
                aor: aor.into(),
                gruu: DEVICE_A.into(),
                sdp: sdp.into(),
                ..Default::default()
            }))
            .await;
        match reply {
            Err(ClientError::Status(e)) => {
                assert_eq!(e.code, v1::Code::InvalidArgument as i32, "{field}");
                assert!(e.message.contains(field), "{field}: {}", e.message);
                assert!(e.message.len() < 200, "{}", e.message);
            }
            other => panic!("{field} accepted: {other:?}"),
        }
    }
    let proxy = UdpSocket::bind("127.0.0.1:0").expect("bind");
    proxy
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let offer = request(vec![
        ("command", bytes("offer")),
        ("call-id", bytes(long_id.as_str())),
        ("from-tag", bytes("f")),
        ("sdp", bytes(sdp)),
    ]);
    let reply = ng_call(&proxy, ng, "long", &offer).expect("a reply");
    let reason = get_str(&reply, "error-reason").expect("an error");
    assert!(reason.contains("call_id"), "{reason}");
    assert_eq!(stats(&client).await.sessions, 0, "nothing kept");
}

/// Finding 4: a TCP client could hold a control slot forever without
/// authenticating. Now it is closed after the deadline.
#[tokio::test]
async fn an_unauthenticated_tcp_client_is_closed_after_the_deadline() {
    let relay = Relay::start(&["--control-token", "0123456789abcdef-token"]);
    let mut idle = TcpStream::connect(relay.tcp_socket_addr()).expect("connect");
    idle.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let started = Instant::now();
    let mut received = Vec::new();
    // Sends nothing; reads until the relay closes the connection.
    let _ = idle.read_to_end(&mut received);
    assert!(started.elapsed() < Duration::from_secs(15), "never closed");
    assert!(!received.is_empty(), "closed without a reason");
    let client = relay.client().await;
    assert_eq!(
        stats(&client).await.refusals.get("control_auth_timeout"),
        Some(&1)
    );
}

/// Review finding: before authenticating, a client could announce a 1 MiB
/// frame and have the relay buffer it. The limit is 4 KiB until the token
/// is checked, and the full limit after.
#[tokio::test]
async fn an_unauthenticated_client_cannot_send_a_large_frame() {
    let token = "0123456789abcdef-token";
    let relay = Relay::start(&["--control-token", token]);
    let mut early = TcpStream::connect(relay.tcp_socket_addr()).expect("connect");
    early
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    // A frame header announcing 64 KiB, then nothing: the relay must refuse
    // on the header alone rather than wait for the body.
    early
        .write_all(&[0, 0, 1, 0, 0])
        .expect("send frame header");
    let mut received = Vec::new();
    let _ = early.read_to_end(&mut received);
    let text = String::from_utf8_lossy(&received);
    assert!(text.contains("exceeds the limit of 4096 bytes"), "{text}");

    // An authenticated client may still send frames of ordinary size: an
    // SDP of 8 KiB is larger than the pre-auth limit.
    let client = Client::connect(&relay.tcp_addr(), Some(token))
        .await
        .expect("authenticated client");
    let padding = format!("a=x-pad:{}\r\n", "p".repeat(8192));
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n{padding}m=audio 4000 RTP/AVP 0\r\n"
    );
    let created = client
        .call(Command::CreateSession(v1::CreateSessionRequest {
            call_id: "large-frame-after-auth".into(),
            from_tag: "f".into(),
            aor: AOR.into(),
            gruu: DEVICE_A.into(),
            sdp,
            ..Default::default()
        }))
        .await;
    assert!(created.is_ok(), "{created:?}");
}

/// The packaged config opens the Unix socket only; TCP is shown commented
/// out with the token next to it.
#[test]
fn the_packaged_config_listens_on_the_unix_socket_only() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/baton.toml"))
        .expect("contrib/baton.toml");
    let active: Vec<&str> = text
        .lines()
        .filter(|line| line.trim_start().starts_with("control"))
        .collect();
    assert_eq!(active, ["control = [\"unix:/run/baton/control.sock\"]"]);
    assert!(
        text.contains("# control = [\"unix:/run/baton/control.sock\", \"tcp:127.0.0.1:7120\"]")
    );
}

/// Finding 5: 300 idle scrapers under a 256-fd limit took the relay to
/// 120 % CPU and control stopped answering. Now scrapers beyond the cap are
/// closed at once (counted), idle ones time out, and control answers.
#[test]
fn a_scraper_flood_cannot_starve_control() {
    if Process::new("prlimit").arg("--version").output().is_err() {
        eprintln!("SKIPPED: prlimit (util-linux) is missing");
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let socket = dir.path().join("c.sock");
    let metrics_port = common::free_tcp_port();
    let mut child = Process::new("prlimit")
        .arg("--nofile=96:96")
        .arg(common::baton_bin())
        .args(["run", "--workers", "1", "--control"])
        .arg(format!("unix:{}", socket.display()))
        .args(["--metrics", &format!("127.0.0.1:{metrics_port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn under prlimit");
    let deadline = Instant::now() + common::PROCESS_DEADLINE;
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let control = format!("unix:{}", socket.display());
    let mut scrapers = Vec::new();
    for _ in 0..150 {
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", metrics_port)) {
            scrapers.push(stream);
        }
    }
    // Control still answers, with file descriptors to spare, and the relay
    // has closed every scraper over the cap.
    let deadline = Instant::now() + common::PROCESS_DEADLINE;
    loop {
        let stats = common::stdout_json(&common::ctl(&control, &["stats"]));
        let refused = &stats["refusals"]["metrics_connection_limit"];
        let refused = refused
            .as_str()
            .and_then(|n| n.parse::<u64>().ok())
            .or_else(|| refused.as_u64())
            .unwrap_or(0);
        if refused >= 100 {
            break;
        }
        assert!(Instant::now() < deadline, "{refused} refused: {stats}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // An idle scraper is closed by the header timeout.
    let idle = &mut scrapers[0];
    idle.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mut sink = Vec::new();
    let _ = idle.read_to_end(&mut sink);
    drop(scrapers);
    // A real scrape works again.
    let scraped = (0..100).find_map(|_| {
        let mut stream = TcpStream::connect(("127.0.0.1", metrics_port)).ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        if text.contains("baton_refusals_total") {
            Some(text)
        } else {
            std::thread::sleep(Duration::from_millis(50));
            None
        }
    });
    assert!(scraped.is_some(), "no scrape succeeded after the flood");
    common::signal(&child, nix::sys::signal::Signal::SIGTERM);
    assert!(common::wait_bounded(&mut child).success());
}
