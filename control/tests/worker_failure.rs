//! A media worker that fails (a bug: it panics) takes only its own sessions
//! with it: they end with an event, their ports come back, the other
//! worker's calls keep flowing, and a new worker takes its place.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use baton_control::sessions::{SessionOptions, Sessions};
use baton_proto::v1;
use baton_relay::core::session::Timeouts;
use baton_relay::{DataplaneConfig, WorkerId};

struct Call {
    session: String,
    worker: u32,
    device: UdpSocket,
    remote: UdpSocket,
    /// Where the device sends.
    relay_user: SocketAddr,
}

fn socket() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    socket
}

async fn create(sessions: &Sessions, n: usize) -> Call {
    let (device, remote) = (socket(), socket());
    let endpoint = |s: &UdpSocket| v1::Endpoint {
        rtp: s.local_addr().expect("addr").to_string(),
        rtcp: String::new(),
    };
    let created = sessions
        .create(v1::CreateSessionRequest {
            call_id: format!("failure-{n}"),
            from_tag: "a".into(),
            to_tag: "b".into(),
            aor: format!("sip:user{n}@example.test"),
            gruu: format!(
                "sip:user{n}@example.test;gr=urn:uuid:{n:08x}-0000-0000-0000-000000000000"
            ),
            streams: vec![v1::StreamSpec {
                kind: "audio".into(),
                codecs: vec![v1::Codec {
                    payload_type: 0,
                    name: "PCMU".into(),
                    clock_rate: 8000,
                    ..Default::default()
                }],
                rtcp_mux: true,
                user_peer: Some(endpoint(&device)),
                remote_peer: Some(endpoint(&remote)),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("create");
    let stream = created.streams.first().expect("a stream");
    let relay_user = stream
        .user
        .as_ref()
        .expect("user side")
        .rtp
        .parse()
        .expect("address");
    let info = sessions
        .get(Some(&v1::SessionRef {
            by: Some(v1::session_ref::By::Id(created.session.clone())),
        }))
        .await
        .expect("get");
    Call {
        session: created.session,
        worker: info.worker,
        device,
        remote,
        relay_user,
    }
}

/// The device sends one RTP packet; true if the remote receives it.
fn media_flows(call: &Call, seq: u16) -> bool {
    let packet = baton_relay::core::rtp::RtpRepr {
        sequence: seq,
        ssrc: 0x1234_5678,
        ..Default::default()
    }
    .to_vec(&[0; 160]);
    call.device.send_to(&packet, call.relay_user).expect("send");
    let mut buf = [0u8; 2048];
    matches!(call.remote.recv_from(&mut buf), Ok((172, _)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_worker_loses_only_its_sessions_and_is_restarted() {
    let config = DataplaneConfig {
        workers: 2,
        media_ips: vec!["127.0.0.1".parse().expect("ip")],
        interface_names: Vec::new(),
        ports: (43000, 43099),
        timeouts: Timeouts {
            media: Duration::from_secs(60),
            setup: Duration::from_secs(60),
            hold: Duration::from_secs(60),
        },
        command_queue: 64,
        busy_poll: false,
        dtls_identity: None,
        kernel_forwarding: false,
        user_fast_path: true,
    };
    // Wired as the daemon wires it.
    let service = baton_control::service::start(
        &config,
        SessionOptions {
            learning_window: Duration::from_secs(3),
            max_sessions: 100,
            advertise: Vec::new(),
            transfer_timeout: Duration::from_secs(5),
            allow_unverified_transfer_source: false,
            sdp_limits: baton_control::sip::sdp::SdpLimits::default(),
            drain_timeout: None,
            keyframe_wait: true,
            record_calls: false,
        },
    )
    .expect("start");
    let sessions = service.sessions();
    let mut subscription = sessions.events().subscribe(None).live;

    let mut calls = Vec::new();
    for n in 0..4 {
        calls.push(create(sessions, n).await);
    }
    let on_zero: Vec<&str> = calls
        .iter()
        .filter(|c| c.worker == 0)
        .map(|c| c.session.as_str())
        .collect();
    assert_eq!(on_zero.len(), 2, "sessions go to the least loaded worker");
    for (n, call) in calls.iter().enumerate() {
        assert!(media_flows(call, n as u16), "call {n} before the failure");
    }
    let (_, _, free_before, total) = sessions.dataplane().port_usage()[0].clone();
    assert_eq!(free_before, total - 8, "two pairs per call");

    sessions
        .dataplane()
        .fail_worker_for_tests(WorkerId(0))
        .expect("queued");

    // Both of worker 0's sessions end with an event naming the reason.
    let mut ended = Vec::new();
    while ended.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(5), subscription.recv())
            .await
            .expect("an event in time")
            .expect("event");
        if let Some(v1::event::Kind::SessionTimedOut(timed_out)) = event.kind {
            assert_eq!(timed_out.reason, "worker_failed");
            ended.push(timed_out.session.expect("session").session);
        }
    }
    ended.sort();
    let mut expected: Vec<String> = on_zero.iter().map(|s| (*s).to_owned()).collect();
    expected.sort();
    assert_eq!(ended, expected);
    assert_eq!(sessions.session_count(), 2);
    assert_eq!(sessions.telemetry().worker_failures.get(), 1);

    // Their ports are free again; worker 1's calls still flow.
    let (_, _, free_after, _) = sessions.dataplane().port_usage()[0].clone();
    assert_eq!(free_after, total - 4);
    for call in calls.iter().filter(|c| c.worker == 1) {
        assert!(media_flows(call, 100), "worker 1's call after the failure");
    }

    // A new worker 0 takes new calls (it is the least loaded) and forwards.
    let fresh = create(sessions, 10).await;
    assert_eq!(fresh.worker, 0);
    assert!(media_flows(&fresh, 1), "a call on the restarted worker");

    sessions.dataplane().shutdown();
}
