//! Building blocks of native control requests, shared by the tests.

use std::net::SocketAddr;

use baton_proto::v1;

/// PCMU at payload type 0, the codec of most test calls.
pub fn pcmu() -> v1::Codec {
    v1::Codec {
        payload_type: 0,
        name: "PCMU".into(),
        clock_rate: 8000,
        ..Default::default()
    }
}

/// An rtcp-mux endpoint at `addr`.
pub fn endpoint(addr: SocketAddr) -> v1::Endpoint {
    v1::Endpoint {
        rtp: addr.to_string(),
        rtcp: String::new(),
    }
}

/// A reference to a session by its id.
pub fn by_id(session: &str) -> Option<v1::SessionRef> {
    Some(v1::SessionRef {
        by: Some(v1::session_ref::By::Id(session.into())),
    })
}

/// The next event on `client`'s subscription that `wanted` picks, within
/// 10 s; the others are skipped.
pub async fn next_event(
    client: &baton_control::Client,
    wanted: impl Fn(&v1::event::Kind) -> bool,
) -> v1::event::Kind {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let event = tokio::time::timeout(left, client.next_event())
            .await
            .expect("event in time")
            .expect("connection open");
        if let Some(kind) = event.kind
            && wanted(&kind)
        {
            return kind;
        }
    }
}
