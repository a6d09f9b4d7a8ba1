//! The sans-IO core: a call's media state and every rule about it. Nothing
//! here reads a clock or touches a socket.
//!
//! - [`session`]: one call — streams, the transfer lifecycle, hold, timeouts,
//!   events.
//! - [`stream`]: one media line — legs, source policy, payload rules,
//!   routing, in-place rewriting.
//! - [`continuity`]: the outward RTP timeline (one SSRC, continuous numbers).
//! - [`rtcp_translate`]: RTCP that agrees with the rewritten RTP.
//! - [`srtp`]: SRTP/SRTCP per leg, in place (RFC 3711, 6188, 7714).
//! - [`dtls`]: DTLS-SRTP roles, fingerprints and the keys it exports.
//! - [`stun`]: ICE-lite connectivity checks answered in place.
//! - [`bundle`]: several streams on one transport, routed by MID, SSRC, payload type.
//! - [`keyframe`]: video formats, where keyframes start, keyframe requests.
//! - [`record`]: copies of what a recorded session forwards, for its writer.
//! - [`fastpath`]: which stream directions the kernel may forward, and what
//!   it forwarded moving the state afterwards.
//! - [`snapshot`]: what another relay process needs to go on with a session's
//!   streams (high availability).
//! - [`rtp`]: zero-copy RTP/RTCP views and an RTP builder; [`stats`]: RFC 3550
//!   loss and jitter; [`ids`]: the ids and the two parties.

pub mod bundle;
pub mod continuity;
pub mod dtls;
pub mod fastpath;
pub mod ids;
pub mod keyframe;
pub mod record;
pub mod rtcp_translate;
pub mod rtp;
pub mod session;
pub mod snapshot;
pub mod srtp;
pub mod stats;
pub mod stream;
pub mod stun;
