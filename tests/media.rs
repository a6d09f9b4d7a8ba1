//! The data plane through the real binary over loopback: forwarding both
//! ways, rtcp-mux, IPv6, source policy, port release, timeouts, many
//! sessions on several workers.

mod common;

use std::time::{Duration, Instant};

use baton_control::Client;
use baton_proto::v1::{self, request::Command, response::Result as Reply};
use common::Relay;
use common::media::{Peer, rtcp_rr, rtp};
use common::native::{by_id, endpoint};

fn codec_pcmu() -> v1::Codec {
    v1::Codec {
        payload_type: 0,
        name: "PCMU".into(),
        clock_rate: 8000,
        channels: 0,
        ..Default::default()
    }
}

fn create_request(call_id: &str, streams: Vec<v1::StreamSpec>) -> v1::CreateSessionRequest {
    v1::CreateSessionRequest {
        call_id: call_id.into(),
        from_tag: "from-1".into(),
        to_tag: String::new(),
        aor: "sip:alice@example.com".into(),
        gruu: "sip:alice@example.com;gr=urn:uuid:00000000-0000-0000-0000-00000000000a".into(),
        streams,
        nat_relearn: false,
        ..Default::default()
    }
}

fn audio(user: Option<&Peer>, remote: Option<&Peer>, rtcp_mux: bool) -> v1::StreamSpec {
    v1::StreamSpec {
        kind: "audio".into(),
        codecs: vec![codec_pcmu()],
        rtcp_mux,
        user_peer: user.map(|p| endpoint(p.addr())),
        remote_peer: remote.map(|p| endpoint(p.addr())),
        user_family: 0,
        remote_family: 0,
        ..Default::default()
    }
}

async fn create(client: &Client, request: v1::CreateSessionRequest) -> v1::CreateSessionResponse {
    match client.call(Command::CreateSession(request)).await {
        Ok(Reply::CreateSession(created)) => created,
        other => panic!("create failed: {other:?}"),
    }
}

async fn get(client: &Client, session: &str) -> v1::SessionInfo {
    let request = v1::GetSessionRequest {
        session: by_id(session),
    };
    match client.call(Command::GetSession(request)).await {
        Ok(Reply::GetSession(v1::GetSessionResponse {
            session: Some(info),
        })) => info,
        other => panic!("get failed: {other:?}"),
    }
}

async fn delete(client: &Client, session: &str) -> v1::SessionInfo {
    let request = v1::DeleteSessionRequest {
        session: by_id(session),
    };
    match client.call(Command::DeleteSession(request)).await {
        Ok(Reply::DeleteSession(v1::DeleteSessionResponse {
            session: Some(info),
        })) => info,
        other => panic!("delete failed: {other:?}"),
    }
}

fn leg_stats<'a>(info: &'a v1::SessionInfo, side: &str) -> &'a v1::LegStats {
    let stream = &info.streams[0];
    let leg = if side == "user" {
        &stream.user
    } else {
        &stream.remote
    };
    leg.as_ref()
        .and_then(|l| l.stats.as_ref())
        .expect("leg stats")
}

/// The relay's addresses of stream 0: (user rtp, user rtcp, remote rtp, remote rtcp).
fn relay_addrs(created: &v1::CreateSessionResponse) -> (String, String, String, String) {
    let s = &created.streams[0];
    let user = s.user.as_ref().expect("user endpoint");
    let remote = s.remote.as_ref().expect("remote endpoint");
    (
        user.rtp.clone(),
        user.rtcp.clone(),
        remote.rtp.clone(),
        remote.rtcp.clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_and_rtcp_flow_both_ways_byte_identical() {
    let relay = Relay::start(&[]);
    let client = relay.client().await;
    // Device and remote, each with an RTP and an RTCP socket at port + 1 is
    // not guaranteed on an ephemeral port: signal RTCP explicitly.
    let (device, device_rtcp) = (Peer::v4(), Peer::v4());
    let (remote, remote_rtcp) = (Peer::v4(), Peer::v4());
    let mut stream = audio(Some(&device), Some(&remote), false);
    stream.user_peer.as_mut().expect("peer").rtcp = device_rtcp.addr().to_string();
    stream.remote_peer.as_mut().expect("peer").rtcp = remote_rtcp.addr().to_string();
    let created = create(&client, create_request("flow", vec![stream])).await;
    let (user_rtp, user_rtcp, remote_rtp, remote_rtcp_addr) = relay_addrs(&created);
    assert_ne!(user_rtp, user_rtcp);

    for seq in 0..20u16 {
        let packet = rtp(0, seq, u32::from(seq) * 160, 0x1111, &[seq as u8; 160]);
        device.send(&user_rtp, &packet);
        let (got, from) = remote.recv();
        assert_eq!(got, packet, "device → remote, byte for byte");
        assert_eq!(
            from.to_string(),
            remote_rtp,
            "sent from the relay's remote-leg port"
        );

        let answer = rtp(
            0,
            1000 + seq,
            5000 + u32::from(seq) * 160,
            0x2222,
            &[0x55; 160],
        );
        remote.send(&remote_rtp, &answer);
        let (got, from) = device.recv();
        assert_eq!(got, answer, "remote → device, byte for byte");
        assert_eq!(from.to_string(), user_rtp);
    }
    let report = rtcp_rr(0x1111);
    device_rtcp.send(&user_rtcp, &report);
    let (got, from) = remote_rtcp.recv();
    assert_eq!(got, report);
    assert_eq!(from.to_string(), remote_rtcp_addr);
    let report = rtcp_rr(0x2222);
    remote_rtcp.send(&remote_rtcp_addr, &report);
    assert_eq!(device_rtcp.recv().0, report);

    let info = get(&client, &created.session).await;
    let user = leg_stats(&info, "user");
    assert_eq!(
        (user.rtp_packets_in, user.rtcp_packets_in, user.packets_out),
        (20, 1, 21)
    );
    assert_eq!(user.lost, 0);
    assert!(user.drops.is_empty(), "{:?}", user.drops);
    let remote_stats = leg_stats(&info, "remote");
    assert_eq!(
        (remote_stats.rtp_packets_in, remote_stats.packets_out),
        (20, 21)
    );
    assert_eq!(
        info.streams[0].user.as_ref().expect("leg").peer_source,
        "signalled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtcp_mux_uses_one_port_per_leg() {
    let relay = Relay::start(&[]);
    let client = relay.client().await;
    let (device, remote) = (Peer::v4(), Peer::v4());
    let created = create(
        &client,
        create_request("mux", vec![audio(Some(&device), Some(&remote), true)]),
    )
    .await;
    let (user_rtp, user_rtcp, remote_rtp, remote_rtcp) = relay_addrs(&created);
    assert_eq!(user_rtp, user_rtcp);
    assert_eq!(remote_rtp, remote_rtcp);
    let media = rtp(0, 1, 160, 0xabc, &[1; 160]);
    let control = rtcp_rr(0xabc);
    device.send(&user_rtp, &media);
    device.send(&user_rtp, &control);
    let got: Vec<Vec<u8>> = remote.recv_n(2).into_iter().map(|(b, _)| b).collect();
    assert_eq!(got, [media, control]);
    remote.send(&remote_rtp, &rtcp_rr(0xdef));
    assert_eq!(device.recv().0, rtcp_rr(0xdef));
    let info = get(&client, &created.session).await;
    assert_eq!(leg_stats(&info, "user").rtcp_packets_in, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_legs_and_ipv4_to_ipv6_bridging() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback on this host; skipping");
        return;
    }
    let relay = Relay::start(&["--media-ip", "127.0.0.1", "--media-ip", "::1"]);
    let client = relay.client().await;
    let device = Peer::bind("::1");
    let remote = Peer::v4();
    let created = create(
        &client,
        create_request("v6", vec![audio(Some(&device), Some(&remote), true)]),
    )
    .await;
    let (user_rtp, _, remote_rtp, _) = relay_addrs(&created);
    assert!(user_rtp.starts_with("[::1]:"), "{user_rtp}");
    assert!(remote_rtp.starts_with("127.0.0.1:"), "{remote_rtp}");
    let packet = rtp(0, 7, 1120, 0x6666, &[6; 160]);
    device.send(&user_rtp, &packet);
    assert_eq!(remote.recv().0, packet);
    remote.send(&remote_rtp, &packet);
    let (got, from) = device.recv();
    assert_eq!(got, packet);
    assert_eq!(from.to_string(), user_rtp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latches_the_first_source_and_drops_strangers() {
    let relay = Relay::start(&[]);
    let client = relay.client().await;
    client.subscribe().await.expect("subscribe");
    let (device, remote, stranger) = (Peer::v4(), Peer::v4(), Peer::v4());
    // No user peer signalled: the user leg learns the device.
    let created = create(
        &client,
        create_request("latch", vec![audio(None, Some(&remote), true)]),
    )
    .await;
    let (user_rtp, ..) = relay_addrs(&created);
    // Before anything is learned, the remote's media has nowhere to go.
    remote.send(&relay_addrs(&created).2, &rtp(0, 1, 0, 0x2, &[2; 160]));
    device.expect_silence();

    let first = rtp(0, 1, 160, 0x1, &[1; 160]);
    device.send(&user_rtp, &first);
    assert_eq!(remote.recv().0, first);
    let event = tokio::time::timeout(Duration::from_secs(5), client.next_event())
        .await
        .expect("event in time")
        .expect("event");
    match event.kind {
        Some(v1::event::Kind::SourceLatched(latched)) => {
            assert_eq!(latched.session, created.session);
            assert_eq!(latched.leg, "user");
            assert_eq!(latched.address, device.addr().to_string());
        }
        other => panic!("expected source_latched, got {other:?}"),
    }

    // A stranger, even with a plausible packet, is dropped and counted.
    for seq in 2..12u16 {
        stranger.send(
            &user_rtp,
            &rtp(0, seq, 160 * u32::from(seq), 0x1, &[0xee; 160]),
        );
    }
    remote.expect_silence();
    // The remote's media goes to the learned device, not the stranger.
    let answer = rtp(0, 2, 320, 0x2, &[2; 160]);
    remote.send(&relay_addrs(&created).2, &answer);
    assert_eq!(device.recv().0, answer);
    stranger.expect_silence();

    let info = get(&client, &created.session).await;
    let user = leg_stats(&info, "user");
    assert_eq!(user.drops.get("stranger"), Some(&10));
    assert_eq!(user.rtp_packets_in, 1);
    assert_eq!(
        info.streams[0].user.as_ref().expect("leg").peer_source,
        "learned"
    );
    let remote_stats = leg_stats(&info, "remote");
    assert_eq!(remote_stats.drops.get("no_destination"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signalled_peer_never_accepts_another_source() {
    let relay = Relay::start(&[]);
    let client = relay.client().await;
    let (device, remote, stranger) = (Peer::v4(), Peer::v4(), Peer::v4());
    let created = create(
        &client,
        create_request("strict", vec![audio(Some(&device), Some(&remote), true)]),
    )
    .await;
    let (user_rtp, _, remote_rtp, _) = relay_addrs(&created);
    // The stranger is first: with a signalled peer, being first wins nothing.
    stranger.send(&user_rtp, &rtp(0, 1, 0, 0x9, &[9; 160]));
    stranger.send(&remote_rtp, &rtp(0, 1, 0, 0x9, &[9; 160]));
    remote.expect_silence();
    device.expect_silence();
    let info = get(&client, &created.session).await;
    assert_eq!(leg_stats(&info, "user").drops.get("stranger"), Some(&1));
    assert_eq!(leg_stats(&info, "remote").drops.get("stranger"), Some(&1));
    let packet = rtp(0, 1, 0, 0x1, &[1; 160]);
    device.send(&user_rtp, &packet);
    assert_eq!(remote.recv().0, packet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_datagrams_are_counted_and_the_call_goes_on() {
    let relay = Relay::start(&[]);
    let client = relay.client().await;
    let (device, remote) = (Peer::v4(), Peer::v4());
    let created = create(
        &client,
        create_request("junk", vec![audio(Some(&device), Some(&remote), false)]),
    )
    .await;
    let (user_rtp, user_rtcp, ..) = relay_addrs(&created);
    for junk in [&[][..], &[0x80; 5][..], &[0x40; 40][..], &[0x8f; 20][..]] {
        device.send(&user_rtp, junk);
    }
    device.send(&user_rtcp, &[0x80, 200, 0, 50, 1, 2, 3, 4]);
    let good = rtp(0, 1, 0, 0x1, &[1; 160]);
    device.send(&user_rtp, &good);
    assert_eq!(remote.recv().0, good);
    let info = get(&client, &created.session).await;
    let drops = &leg_stats(&info, "user").drops;
    assert_eq!(drops.get("malformed_rtp"), Some(&4), "{drops:?}");
    assert_eq!(drops.get("malformed_rtcp"), Some(&1), "{drops:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_returns_final_stats_and_frees_the_ports() {
    let relay = Relay::start(&["--ports", "45000-45099"]);
    let client = relay.client().await;
    let (device, remote) = (Peer::v4(), Peer::v4());
    let created = create(
        &client,
        create_request("delete", vec![audio(Some(&device), Some(&remote), false)]),
    )
    .await;
    let (user_rtp, user_rtcp, remote_rtp, remote_rtcp) = relay_addrs(&created);
    let packet = rtp(0, 1, 0, 0x1, &[1; 160]);
    device.send(&user_rtp, &packet);
    remote.recv();
    let info = delete(&client, &created.session).await;
    assert_eq!(leg_stats(&info, "user").rtp_packets_in, 1);
    for addr in [user_rtp, user_rtcp, remote_rtp, remote_rtcp] {
        std::net::UdpSocket::bind(&addr)
            .unwrap_or_else(|e| panic!("{addr} still held after delete: {e}"));
    }
    // And the session is gone.
    let again = client
        .call(Command::GetSession(v1::GetSessionRequest {
            session: by_id(&created.session),
        }))
        .await;
    assert!(
        matches!(&again, Err(baton_control::ClientError::Status(e)) if e.code() == v1::Code::NotFound),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_timeout_tears_down_and_reports() {
    let relay = Relay::start(&[
        "--media-timeout",
        "0.6",
        "--setup-timeout",
        "0.8",
        "--ports",
        "45100-45199",
    ]);
    let client = relay.client().await;
    client.subscribe().await.expect("subscribe");
    let (device, remote) = (Peer::v4(), Peer::v4());
    let talking = create(
        &client,
        create_request("timeout", vec![audio(Some(&device), Some(&remote), true)]),
    )
    .await;
    let silent = create(
        &client,
        create_request("never", vec![audio(Some(&device), Some(&remote), true)]),
    )
    .await;
    let (user_rtp, ..) = relay_addrs(&talking);
    for seq in 0..3 {
        device.send(&user_rtp, &rtp(0, seq, 0, 0x1, &[1; 160]));
    }
    remote.recv_n(3);
    // Both sessions end by themselves: one by media, one by setup timeout.
    let mut reasons = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while reasons.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, client.next_event())
            .await
            .expect("timeout events in time")
            .expect("event");
        if let Some(v1::event::Kind::SessionTimedOut(ended)) = event.kind {
            let info = ended.session.expect("final state");
            reasons.insert(info.session.clone(), (ended.reason, info));
        }
    }
    let (reason, info) = &reasons[&talking.session];
    assert_eq!(reason, "media_timeout");
    assert_eq!(leg_stats(info, "user").rtp_packets_in, 3);
    assert_eq!(reasons[&silent.session].0, "setup_timeout");
    // Ports are free and the registry is empty.
    std::net::UdpSocket::bind(&user_rtp).expect("port freed after timeout");
    let Ok(Reply::GetStats(stats)) = client.call(Command::GetStats(v1::GetStatsRequest {})).await
    else {
        panic!("stats")
    };
    assert_eq!(stats.sessions, 0);
    assert_eq!(stats.sessions_timed_out, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_sessions_on_four_workers_all_forward() {
    const SESSIONS: usize = 500;
    let relay = Relay::start(&["--workers", "4", "--ports", "46000-49999"]);
    let client = relay.client().await;
    // One device socket and one remote socket stand in for every call: the
    // relay routes by its own ports, and we tell sessions apart by payload.
    let (device, remote) = (Peer::v4(), Peer::v4());
    let creates = (0..SESSIONS).map(|i| {
        let request = create_request(
            &format!("many-{i}"),
            vec![audio(Some(&device), Some(&remote), true)],
        );
        client.call(Command::CreateSession(request))
    });
    let created: Vec<v1::CreateSessionResponse> = futures_util::future::join_all(creates)
        .await
        .into_iter()
        .map(|r| match r {
            Ok(Reply::CreateSession(c)) => c,
            other => panic!("create: {other:?}"),
        })
        .collect();
    // In chunks, draining in between: one test socket receiving for 500
    // calls at once would overflow its own receive buffer.
    const CHUNK: usize = 50;
    let index_of = |bytes: &[u8]| u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    let mut to_remote = Vec::new();
    let mut to_device = Vec::new();
    for chunk in created.chunks(CHUNK).enumerate() {
        let (c, sessions) = chunk;
        for (j, session) in sessions.iter().enumerate() {
            let i = (c * CHUNK + j) as u32;
            let (user_rtp, _, remote_rtp, _) = relay_addrs(session);
            device.send(&user_rtp, &rtp(0, 1, 0, i, &i.to_be_bytes()));
            remote.send(&remote_rtp, &rtp(0, 1, 0, i, &i.to_be_bytes()));
        }
        to_remote.extend(
            remote
                .recv_n(sessions.len())
                .iter()
                .map(|(b, _)| index_of(b)),
        );
        to_device.extend(
            device
                .recv_n(sessions.len())
                .iter()
                .map(|(b, _)| index_of(b)),
        );
    }
    to_remote.sort_unstable();
    to_device.sort_unstable();
    let all: Vec<u32> = (0..SESSIONS as u32).collect();
    assert_eq!(to_remote, all, "every session forwarded device → remote");
    assert_eq!(to_device, all, "every session forwarded remote → device");

    let Ok(Reply::GetStats(stats)) = client.call(Command::GetStats(v1::GetStatsRequest {})).await
    else {
        panic!("stats")
    };
    assert_eq!(stats.sessions as usize, SESSIONS);
    assert_eq!(stats.workers.len(), 4);
    for worker in &stats.workers {
        assert!(
            worker.sessions >= 100,
            "uneven pinning: {:?}",
            stats.workers
        );
        assert!(worker.packets_forwarded > 0, "{:?}", stats.workers);
    }
    assert_eq!(stats.packets_forwarded as usize, 2 * SESSIONS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_exhaustion_is_resource_exhausted_and_leaves_nothing_behind() {
    // 45200-45205: three even/odd pairs; a non-mux session takes two.
    let relay = Relay::start(&["--ports", "45200-45205"]);
    let client = relay.client().await;
    let first = create(
        &client,
        create_request("first", vec![audio(None, None, false)]),
    )
    .await;
    let second = client
        .call(Command::CreateSession(create_request(
            "second",
            vec![audio(None, None, false)],
        )))
        .await;
    match &second {
        Err(baton_control::ClientError::Status(e)) => {
            assert_eq!(e.code(), v1::Code::ResourceExhausted);
            assert!(e.message.contains("45200-45205"), "{}", e.message);
        }
        other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
    }
    let Ok(Reply::GetStats(stats)) = client.call(Command::GetStats(v1::GetStatsRequest {})).await
    else {
        panic!("stats")
    };
    assert_eq!(stats.sessions, 1, "the failed create left no session");
    assert_eq!(
        stats.ports[0].free_pairs, 1,
        "the failed create's pair went back"
    );
    delete(&client, &first.session).await;
    create(
        &client,
        create_request("third", vec![audio(None, None, false)]),
    )
    .await;
}

#[test]
fn ctl_session_commands_print_the_documented_json() {
    let relay = Relay::start(&[]);
    let device = Peer::v4();
    let created = common::stdout_json(&relay.ctl(&[
        "create",
        "--call-id",
        "ctl-call",
        "--from-tag",
        "ft",
        "--aor",
        "sip:alice@example.com",
        "--gruu",
        "sip:alice@example.com;gr=urn:uuid:1",
        "--stream",
        "audio:0/PCMU/8000,101/telephone-event/8000",
        "--user-peer",
        &device.addr().to_string(),
    ]));
    let session = created["session"].as_str().expect("session id").to_owned();
    let stream = &created["streams"][0];
    assert_eq!(stream["kind"], "audio");
    for side in ["user", "remote"] {
        for component in ["rtp", "rtcp"] {
            let addr = stream[side][component].as_str().expect("address");
            assert!(
                addr.parse::<std::net::SocketAddr>().is_ok(),
                "{side}.{component}: {addr}"
            );
        }
    }
    let got = common::stdout_json(&relay.ctl(&["get", "--session", &session]));
    assert_eq!(got["session"]["call_id"], "ctl-call");
    assert_eq!(
        got["session"]["streams"][0]["user"]["peer_source"],
        "signalled"
    );
    let by_dialog =
        common::stdout_json(&relay.ctl(&["get", "--call-id", "ctl-call", "--from-tag", "ft"]));
    assert_eq!(by_dialog["session"]["session"], session);
    let updated = common::stdout_json(&relay.ctl(&[
        "update",
        "--session",
        &session,
        "--set-to-tag",
        "tt",
        "--remote-peer",
        "127.0.0.1:40000",
    ]));
    assert_eq!(updated["session"]["to_tag"], "tt");
    assert_eq!(
        updated["session"]["streams"][0]["remote"]["peer"]["rtp"],
        "127.0.0.1:40000"
    );
    let list = common::stdout_json(&relay.ctl(&["list"]));
    assert_eq!(list["sessions"].as_array().map(Vec::len), Some(1));
    let deleted = common::stdout_json(&relay.ctl(&["delete", "--session", &session]));
    assert_eq!(deleted["session"]["session"], session);
    // Errors: exit 1 with the code on stderr.
    let missing = relay.ctl(&["get", "--session", &session]);
    assert_eq!(missing.status.code(), Some(1));
    let error: serde_json::Value = serde_json::from_slice(&missing.stderr).expect("json error");
    assert_eq!(error["code"], "NOT_FOUND");
    let bad = relay.ctl(&[
        "create",
        "--call-id",
        "c",
        "--from-tag",
        "f",
        "--aor",
        "mailto:x",
        "--gruu",
        "sip:x@y",
        "--stream",
        "audio:0",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    let error: serde_json::Value = serde_json::from_slice(&bad.stderr).expect("json error");
    assert_eq!(error["code"], "INVALID_ARGUMENT");
    // Bad shorthand is a usage error, caught before the relay is asked.
    let usage = relay.ctl(&[
        "create",
        "--call-id",
        "c",
        "--from-tag",
        "f",
        "--aor",
        "sip:x@y",
        "--gruu",
        "sip:x@y",
        "--stream",
        "audio:96",
    ]);
    assert_eq!(usage.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertised_ip_is_what_signalling_gets() {
    // Nothing is sent to the advertised address: it only appears in answers.
    let relay = Relay::start(&["--media-ip", "127.0.0.1", "--advertise-ip", "192.0.2.10"]);
    let client = relay.client().await;
    let created = create(
        &client,
        create_request("nat", vec![audio(None, None, true)]),
    )
    .await;
    let (user_rtp, _, remote_rtp, _) = relay_addrs(&created);
    assert!(user_rtp.starts_with("192.0.2.10:"), "{user_rtp}");
    assert!(remote_rtp.starts_with("192.0.2.10:"), "{remote_rtp}");
}
