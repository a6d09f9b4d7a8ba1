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
