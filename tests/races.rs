//! Call-state correctness under a SIP proxy's ordinary concurrency (issue
//! 22), through the real binary: CANCEL racing INVITE (create and delete at
//! once), retransmitted offers from two proxy processes, commit then a new
//! transfer, long holds, a handoff that never gets its answer. After each,
//! the invariants: every command answered once, the registry and the
//! workers agree (`audit`), every port back, counters that add up.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use baton_control::ng::wire::get_str;
use baton_control::sip::sdp::Direction;
use baton_control::{Client, ClientError};
use baton_proto::v1::{self, request::Command, response::Result as Reply};
use common::Relay;
use common::media::{Peer, rtp};
use common::native::{by_id, endpoint, next_event, pcmu};
use common::ng::{Proxy, body, flags, ng_call, reason, request, result, sdp_of, text};

const AOR: &str = "sip:alice@example.com";
const GRUU_A: &str = "sip:alice@example.com;gr=urn:uuid:00000000-0000-0000-0000-00000000000a";
const GRUU_B: &str = "sip:alice@example.com;gr=urn:uuid:00000000-0000-0000-0000-00000000000b";
const GRUU_C: &str = "sip:alice@example.com;gr=urn:uuid:00000000-0000-0000-0000-00000000000c";

fn by_dialog(call_id: &str) -> Option<v1::SessionRef> {
    Some(v1::SessionRef {
        by: Some(v1::session_ref::By::Dialog(v1::Dialog {
            call_id: call_id.into(),
            from_tag: "f".into(),
            to_tag: String::new(),
        })),
    })
}

async fn stats(client: &Client) -> v1::GetStatsResponse {
    match client.call(Command::GetStats(v1::GetStatsRequest {})).await {
        Ok(Reply::GetStats(stats)) => stats,
        other => panic!("stats: {other:?}"),
    }
}

/// The invariants that hold whenever no command is in flight.
async fn assert_invariants(client: &Client) {
    let audit = match client.call(Command::Audit(v1::AuditRequest {})).await {
        Ok(Reply::Audit(audit)) => audit,
        other => panic!("audit: {other:?}"),
    };
    assert!(
        audit.registry_only.is_empty() && audit.worker_only.is_empty(),
        "the registry and the workers disagree: {audit:?}"
    );
    assert_eq!(audit.registry_sessions, audit.worker_sessions);
    let stats = stats(client).await;
    assert_eq!(
        stats.sessions_created,
        stats.sessions_ended + u64::from(stats.sessions),
        "created = ended + live: {stats:?}"
    );
    assert_eq!(
        stats.transfers_started,
        stats.transfers_completed + stats.transfers_failed + u64::from(stats.transfers_pending),
        "started = completed + failed + pending: {stats:?}"
    );
}

/// Deletes every session left, then checks that every port is back.
async fn assert_all_ports_back(client: &Client) {
    let Ok(Reply::ListSessions(list)) = client
        .call(Command::ListSessions(v1::ListSessionsRequest {}))
        .await
    else {
        panic!("list");
    };
    for session in list.sessions {
        let deleted = client
            .call(Command::DeleteSession(v1::DeleteSessionRequest {
                session: by_id(&session.session),
            }))
            .await;
        assert!(deleted.is_ok(), "{deleted:?}");
    }
    let stats = stats(client).await;
    assert_eq!(stats.sessions, 0);
    for ports in &stats.ports {
        assert_eq!(ports.free_pairs, ports.total_pairs, "ports held: {ports:?}");
    }
}

fn create_request(call_id: &str, streams: usize) -> v1::CreateSessionRequest {
    v1::CreateSessionRequest {
        call_id: call_id.into(),
        from_tag: "f".into(),
        aor: AOR.into(),
        gruu: GRUU_A.into(),
        streams: (0..streams)
            .map(|_| v1::StreamSpec {
                kind: "audio".into(),
                codecs: vec![pcmu()],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Finding 3: a delete that ran while create was still binding ports left a
/// session the registry forgot (9 in 300 with 16 streams). Two proxy
/// processes (two connections) send them at once, 300 times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_and_delete_at_the_same_moment_leave_nothing_hidden() {
    let relay = Relay::start(&[]);
    let (inviter, canceller) = (relay.client().await, relay.client().await);
    let admin = relay.client().await;
    let (mut created, mut deleted, mut met) = (0, 0, 0);
    for i in 0..300 {
        let call_id = format!("race-{i}");
        let create = inviter.call(Command::CreateSession(create_request(&call_id, 16)));
        // The CANCEL's delete lands at varying points of the create.
        let stagger = Duration::from_micros(200 * (i % 10));
        let delete = async {
            tokio::time::sleep(stagger).await;
            canceller
                .call(Command::DeleteSession(v1::DeleteSessionRequest {
                    session: by_dialog(&call_id),
                }))
                .await
        };
        let (create, delete) = tokio::join!(create, delete);
        // Each command is answered, once, with a result or a clear error.
        let session = match create {
            Ok(Reply::CreateSession(created)) => created.session,
            other => panic!("create {i}: {other:?}"),
        };
        created += 1;
        match delete {
            Ok(Reply::DeleteSession(_)) => {
                deleted += 1;
                met += 1;
            }
            Err(ClientError::Status(e)) if e.code == v1::Code::NotFound as i32 => {
                // The delete came first: the proxy's BYE would end it.
                let late = admin
                    .call(Command::DeleteSession(v1::DeleteSessionRequest {
                        session: by_id(&session),
                    }))
                    .await;
                assert!(late.is_ok(), "the session is known: {late:?}");
                deleted += 1;
            }
            other => panic!("delete {i}: {other:?}"),
        }
        if i % 50 == 49 {
            assert_invariants(&admin).await;
        }
    }
    assert_eq!((created, deleted), (300, 300));
    assert!(met > 0, "no delete met its create");
    eprintln!("{met} of 300 deletes met their create");
    assert_invariants(&admin).await;
    assert_all_ports_back(&admin).await;
    assert_invariants(&admin).await;
}

/// Finding 4: a delete that meets a full worker queue (or a slow worker)
/// used to drop the record anyway; now the session stays listed and the
/// retry deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_is_confirmed_by_the_worker_before_the_record_goes() {
    let relay = Relay::start(&[]);
    let client = relay.client().await;
    let Ok(Reply::CreateSession(created)) = client
        .call(Command::CreateSession(create_request("confirmed", 1)))
        .await
    else {
        panic!("create");
    };
    let deleted = client
        .call(Command::DeleteSession(v1::DeleteSessionRequest {
            session: by_id(&created.session),
        }))
        .await;
    assert!(matches!(deleted, Ok(Reply::DeleteSession(_))));
    let again = client
        .call(Command::DeleteSession(v1::DeleteSessionRequest {
            session: by_id(&created.session),
        }))
        .await;
    assert!(
        matches!(&again, Err(ClientError::Status(e)) if e.code == v1::Code::NotFound as i32),
        "{again:?}"
    );
    assert_invariants(&client).await;
    assert_eq!(stats(&client).await.sessions_ended, 1);
}

/// Finding 6: two identical offers for a new call at once (a proxy's two
/// processes handling a retransmitted INVITE) ran the second as an update
/// of a half-created session and corrupted the call. Now the second waits
/// for the first; the call works, its answer and re-INVITE too.
#[test]
fn identical_ng_offers_at_once_make_one_working_call() {
    let (relay, ng, _) = common::ng::relay_with_ng();
    for i in 0..60 {
        let call_id = format!("twice-{i}");
        let a = Peer::v4();
        let offer = request(vec![
            ("command", text("offer")),
            ("call-id", text(call_id.as_str())),
            ("from-tag", text("a-tag")),
            ("sdp", text(body("alice", a.addr(), ""))),
        ]);
        let (first, second) = std::thread::scope(|scope| {
            let one = scope.spawn(|| Proxy::new(ng).call(&offer));
            let two = scope.spawn(|| Proxy::new(ng).call(&offer));
            (
                one.join().expect("first proxy"),
                two.join().expect("second proxy"),
            )
        });
        let (first, second) = (sdp_of(&first), sdp_of(&second));
        assert_eq!(
            first.media(0).expect("m").rtp,
            second.media(0).expect("m").rtp,
            "one call, one relay address"
        );
        let bob = Peer::v4();
        let mut proxy = Proxy::new(ng);
        let answer = proxy.call(&request(vec![
            ("command", text("answer")),
            ("call-id", text(call_id.as_str())),
            ("from-tag", text("a-tag")),
            ("to-tag", text("bob-tag")),
            ("sdp", text(body("bob", bob.addr(), ""))),
        ]));
        assert_eq!(result(&answer), "ok", "{answer:?}");
        let reinvite = proxy.call(&request(vec![
            ("command", text("offer")),
            ("call-id", text(call_id.as_str())),
            ("from-tag", text("a-tag")),
            ("to-tag", text("bob-tag")),
            (
                "sdp",
                text(body("alice", a.addr(), "a=sendonly\r\n").replace("a=sendrecv\r\n", "")),
            ),
        ]));
        assert_eq!(result(&reinvite), "ok", "{reinvite:?}");
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = relay.client().await;
        assert_eq!(stats(&client).await.sessions, 60, "one session per call");
        assert_invariants(&client).await;
    });
}

/// Finding 5: transfer to B in commit mode, commit, B silent, then a
/// transfer to C. The report of B's switch was taken for C's: C shown as
/// the device, media still to B, C's timeout silent. Now each report names
/// its transfer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_then_a_new_transfer_keeps_each_transfer_its_own() {
    let relay = Relay::start(&["--transfer-timeout", "1"]);
    let client = relay.client().await;
    let events = relay.client().await;
    events.subscribe().await.expect("subscribe");
    let (a, b, c, remote) = (Peer::v4(), Peer::v4(), Peer::v4(), Peer::v4());
    let mut request = create_request("commit-then-transfer", 1);
    request.streams[0].rtcp_mux = true;
    request.streams[0].user_peer = Some(endpoint(a.addr()));
    request.streams[0].remote_peer = Some(endpoint(remote.addr()));
    let Ok(Reply::CreateSession(created)) = client.call(Command::CreateSession(request)).await
    else {
        panic!("create");
    };
    let session = created.session.clone();
    let transfer_to = |gruu: &str, peer: &Peer, mode: v1::SwitchMode| v1::TransferRequest {
        session: by_id(&session),
        gruu: gruu.into(),
        streams: vec![v1::TransferStream {
            peer: Some(endpoint(peer.addr())),
            ..Default::default()
        }],
        mode: mode as i32,
        ..Default::default()
    };
    let Ok(Reply::Transfer(to_b)) = client
        .call(Command::Transfer(transfer_to(
            GRUU_B,
            &b,
            v1::SwitchMode::Commit,
        )))
        .await
    else {
        panic!("transfer to B");
    };
    let commit = client
        .call(Command::CommitTransfer(v1::CommitTransferRequest {
            session: by_id(&session),
            transfer_id: to_b.transfer_id,
        }))
        .await;
    assert!(commit.is_ok(), "{commit:?}");
    // B stays silent; a transfer to C opens.
    let Ok(Reply::Transfer(to_c)) = client
        .call(Command::Transfer(transfer_to(
            GRUU_C,
            &c,
            v1::SwitchMode::FirstPacket,
        )))
        .await
    else {
        panic!("transfer to C");
    };
    assert_ne!(to_b.transfer_id, to_c.transfer_id);
    // B's transfer is reported as B's.
    let v1::event::Kind::TransferCompleted(done) = next_event(&events, |k| {
        matches!(k, v1::event::Kind::TransferCompleted(_))
    })
    .await
    else {
        unreachable!("filtered");
    };
    assert_eq!(done.transfer_id, to_b.transfer_id);
    assert!(done.gruu.contains("0000000b"), "{done:?}");
    // A commit naming B now is refused: C is the transfer open.
    let stale = client
        .call(Command::CommitTransfer(v1::CommitTransferRequest {
            session: by_id(&session),
            transfer_id: to_b.transfer_id,
        }))
        .await;
    assert!(
        matches!(&stale, Err(ClientError::Status(e)) if e.code == v1::Code::FailedPrecondition as i32),
        "{stale:?}"
    );
    // C never sends: its timeout is reported as C's, and B keeps the call.
    let v1::event::Kind::TransferFailed(failed) =
        next_event(&events, |k| matches!(k, v1::event::Kind::TransferFailed(_))).await
    else {
        unreachable!("filtered");
    };
    assert_eq!(
        (failed.transfer_id, failed.reason.as_str()),
        (to_c.transfer_id, "timeout")
    );
    let Ok(Reply::GetSession(v1::GetSessionResponse {
        session: Some(info),
    })) = client
        .call(Command::GetSession(v1::GetSessionRequest {
            session: by_id(&session),
        }))
        .await
    else {
        panic!("get");
    };
    assert!(info.gruu.contains("0000000b"), "B is the device: {info:?}");
    assert_eq!(info.pending_transfer_id, 0);
    let remote_port = info.streams[0]
        .remote
        .as_ref()
        .and_then(|l| l.local.as_ref())
        .expect("remote leg")
        .rtp
        .clone();
    remote.send(&remote_port, &rtp(0, 1, 160, 0xF, &[5; 160]));
    let (to_device, _) = b.recv();
    assert_eq!(&to_device[12..], &[5; 160], "the remote's media reaches B");
    c.expect_silence();
    assert_invariants(&client).await;
}

/// Finding 1: a call on hold longer than the media timeout was torn down
/// when taken off hold (10/9/5/0 of 10 survived with media restarting
/// 0/20/50/100 ms after the resume). Now the resume restarts the clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_hold_then_resume_keeps_the_call() {
    let relay = Relay::start(&["--media-timeout", "1", "--hold-timeout", "3600"]);
    let client = relay.client().await;
    let mut calls = Vec::new();
    for (i, restart_after) in [0u64, 100].into_iter().enumerate() {
        let (device, remote) = (Peer::v4(), Peer::v4());
        let mut request = create_request(&format!("hold-{i}"), 1);
        request.streams[0].rtcp_mux = true;
        request.streams[0].user_peer = Some(endpoint(device.addr()));
        request.streams[0].remote_peer = Some(endpoint(remote.addr()));
        let Ok(Reply::CreateSession(created)) = client.call(Command::CreateSession(request)).await
        else {
            panic!("create");
        };
        let user_port = created.streams[0].user.as_ref().expect("user").rtp.clone();
        device.send(&user_port, &rtp(0, 1, 160, 0xA, &[1; 160]));
        remote.recv();
        calls.push((created.session, user_port, device, remote, restart_after));
    }
    let hold = |session: &str, hold: v1::Hold| {
        Command::UpdateSession(v1::UpdateSessionRequest {
            session: by_id(session),
            streams: vec![v1::StreamUpdate {
                index: 0,
                hold: hold as i32,
                ..Default::default()
            }],
            ..Default::default()
        })
    };
    for (session, ..) in &calls {
        assert!(client.call(hold(session, v1::Hold::On)).await.is_ok());
    }
    // Twice the media timeout without a packet, on hold.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (session, ..) in &calls {
        assert!(client.call(hold(session, v1::Hold::Off)).await.is_ok());
    }
    let resumed = Instant::now();
    let mut next_seq = 2u16;
    // Media restarts at once on one call and 100 ms later on the other,
    // and goes on for longer than a tick of the worker's clock.
    while resumed.elapsed() < Duration::from_millis(600) {
        for (_, user_port, device, remote, restart_after) in &calls {
            if resumed.elapsed() >= Duration::from_millis(*restart_after) {
                device.send(
                    user_port,
                    &rtp(0, next_seq, 160 * u32::from(next_seq), 0xA, &[1; 160]),
                );
                remote.recv();
            }
        }
        next_seq += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = stats(&client).await;
    assert_eq!(stats.sessions, 2, "both calls survived their resume");
    assert_eq!(stats.sessions_timed_out, 0);
    assert_invariants(&client).await;
}

/// Finding 7: an ng handoff whose answer never came left its answer stored:
/// A's re-INVITEs were refused for the whole transfer timeout, and then the
/// remote's answer to A's hold was replaced by B's stale body. Now the
/// timeout clears everything the handoff stored.
#[test]
fn an_ng_handoff_that_times_out_clears_what_it_stored() {
    let udp_port = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("port");
    let ng = format!("127.0.0.1:{udp_port}").parse().expect("addr");
    let relay = Relay::start(&[
        "--listen-ng",
        &format!("udp:127.0.0.1:{udp_port}"),
        "--transfer-timeout",
        "1",
    ]);
    let mut call = ng_call(
        ng,
        "lost-answer",
        vec![("aor", text(AOR)), ("gruu", text(GRUU_A))],
    );
    let b = Peer::v4();
    let handoff = call.proxy.call(&request(vec![
        ("command", text("offer")),
        ("call-id", text("lost-answer")),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        ("sdp", text(body("alice-b", b.addr(), ""))),
        ("gruu", text(GRUU_B)),
        ("flags", flags(&["baton-handoff"])),
    ]));
    assert_eq!(result(&handoff), "ok", "{handoff:?}");
    // The 200 OK from B never comes; the transfer times out.
    std::thread::sleep(Duration::from_millis(1500));
    // A puts the call on hold: accepted, and the remote's answer reaches A
    // as the remote wrote it, pointing at A's own relay leg.
    let hold = call.proxy.call(&request(vec![
        ("command", text("offer")),
        ("call-id", text("lost-answer")),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        (
            "sdp",
            text(body("alice-a", call.a.addr(), "a=sendonly\r\n").replace("a=sendrecv\r\n", "")),
        ),
    ]));
    assert_eq!(result(&hold), "ok", "{hold:?}");
    let answer = call.proxy.call(&request(vec![
        ("command", text("answer")),
        ("call-id", text("lost-answer")),
        ("from-tag", text("a-tag")),
        ("to-tag", text("bob-tag")),
        (
            "sdp",
            text(body("bob", call.bob.addr(), "a=recvonly\r\n").replace("a=sendrecv\r\n", "")),
        ),
    ]));
    let to_a = sdp_of(&answer);
    let media = to_a.media(0).expect("m");
    assert_eq!(media.direction, Direction::RecvOnly, "the remote's answer");
    assert_eq!(media.rtp, Some(call.a_to_relay), "A's own relay leg");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = relay.client().await;
        let stats = stats(&client).await;
        assert_eq!((stats.transfers_started, stats.transfers_failed), (1, 1));
        assert_invariants(&client).await;
    });
}

/// An ng handoff is cancelled by a `delete` of the new device's own dialog
/// (its INVITE failed, and the proxy's failure route deletes it); the call
/// goes on with the device it had. A handoff needs the explicit flag (or a
/// `replaces` key): a new `gruu` alone is a re-INVITE (finding 8).
#[test]
fn ng_handoffs_are_asked_for_and_can_be_cancelled() {
    let (relay, ng, _) = common::ng::relay_with_ng();
    let mut call = ng_call(
        ng,
        "cancel-me",
        vec![("aor", text(AOR)), ("gruu", text(GRUU_A))],
    );
    let offer = |gruu: &str, extra: Vec<(&'static str, serde_bencode::value::Value)>| {
        let mut pairs = vec![
            ("command", text("offer")),
            ("call-id", text("cancel-me")),
            ("from-tag", text("a-tag")),
            ("to-tag", text("bob-tag")),
            ("sdp", text(body("alice-a", call.a.addr(), ""))),
            ("gruu", text(gruu)),
        ];
        pairs.extend(extra);
        request(pairs)
    };
    // A re-INVITE whose Contact changed, no handoff asked: an update.
    let plain = call.proxy.call(&offer("sip:alice@192.0.2.9:5070", vec![]));
    assert_eq!(result(&plain), "ok", "{plain:?}");
    // The handoff, then its cancel through B's own dialog.
    let handoff = call.proxy.call(&offer(
        GRUU_B,
        vec![
            ("flags", flags(&["baton-handoff"])),
            ("new-call-id", text("b-dialog")),
            ("new-from-tag", text("b-tag")),
        ],
    ));
    assert_eq!(result(&handoff), "ok", "{handoff:?}");
    let cancel = call.proxy.call(&request(vec![
        ("command", text("delete")),
        ("call-id", text("b-dialog")),
        ("from-tag", text("b-tag")),
    ]));
    assert_eq!(result(&cancel), "ok", "{cancel:?}");
    let query = call.proxy.call(&request(vec![
        ("command", text("query")),
        ("call-id", text("cancel-me")),
    ]));
    assert_eq!(result(&query), "ok", "the call goes on: {query:?}");
    // Deleting the dialog again finds nothing: an error with `fatal`.
    let unknown = call.proxy.call(&request(vec![
        ("command", text("delete")),
        ("call-id", text("b-dialog")),
        ("flags", flags(&["fatal"])),
    ]));
    assert!(reason(&unknown).contains("not found"), "{unknown:?}");
    assert!(get_str(&unknown, "result").is_some());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = relay.client().await;
        let stats = stats(&client).await;
        assert_eq!(
            (
                stats.transfers_started,
                stats.transfers_failed,
                stats.transfers_pending
            ),
            (1, 1, 0),
            "one handoff, cancelled; the plain re-INVITE was none"
        );
        assert_invariants(&client).await;
    });
}

/// Finding 11: events reach a subscriber in sequence order, and one that
/// reconnects resumes after the last event it saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resumes_where_it_left_off() {
    let relay = Relay::start(&["--setup-timeout", "0.3"]);
    let client = relay.client().await;
    let first = relay.client().await;
    first.subscribe().await.expect("subscribe");
    // Each batch has call-ids of its own: a session that timed out sends
    // two events (ended, timed out), so three events can come while the
    // first batch's last session still exists.
    let ends = |batch: &'static str, n: usize| {
        let client = &client;
        async move {
            for i in 0..n {
                let request = create_request(&format!("ends-{batch}-{}", uuid_like(i)), 1);
                let created = client.call(Command::CreateSession(request)).await;
                assert!(created.is_ok(), "{created:?}");
            }
        }
    };
    ends("first", 3).await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(Duration::from_secs(5), first.next_event())
            .await
            .expect("event in time")
            .expect("open");
        seen.push(event.sequence);
    }
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "{seen:?}");
    drop(first);
    // While nobody listens, more sessions end.
    ends("second", 4).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = relay.client().await;
    second.resume_events(seen[2]).await.expect("resume");
    let mut resumed = Vec::new();
    while resumed.len() < 4 {
        let event = tokio::time::timeout(Duration::from_secs(5), second.next_event())
            .await
            .expect("replayed in time")
            .expect("open");
        resumed.push(event.sequence);
    }
    assert_eq!(
        resumed,
        [seen[2] + 1, seen[2] + 2, seen[2] + 3, seen[2] + 4]
    );
    assert_invariants(&client).await;
}

fn uuid_like(i: usize) -> String {
    format!("{i:08x}")
}
