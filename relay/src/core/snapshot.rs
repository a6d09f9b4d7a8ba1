//! What another relay process needs to go on with a session's media where
//! this one stopped (a standby taking over, or a restart): per stream, the
//! peers each leg sends to, the outward numbering and the SRTP indexes.
//! The rest of a session (codecs, keys, ports) is the control plane's and
//! stored by it.
//!
//! Plain data with ages instead of instants, serialized by the control
//! plane; nothing here is read on the packet path.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::core::continuity::{ContinuitySnapshot, SequenceShift};
use crate::core::srtp::SrtpIndexes;
use crate::core::stream::PeerSource;

/// One leg's peer and SRTP state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegSnapshot {
    /// Where its RTP goes.
    pub rtp: Option<SocketAddr>,
    /// Where its RTCP goes.
    pub rtcp: Option<SocketAddr>,
    /// How the relay knew that address.
    pub source: PeerSource,
    /// SRTP from the peer: its highest indexes per SSRC.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub srtp_in: Vec<SrtpIndexes>,
    /// SRTP to the peer: the highest indexes sent per SSRC.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub srtp_out: Vec<SrtpIndexes>,
    /// The next SRTCP index toward the peer.
    #[serde(default)]
    pub srtcp_out: u32,
}

/// One stream: the current device's leg, the remote's, and the numbering
/// of what each receives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSnapshot {
    /// The current device's leg.
    pub device: LegSnapshot,
    /// The remote party's leg.
    pub remote: LegSnapshot,
    /// The stream toward the remote: one SSRC, continuous numbers.
    pub continuity: ContinuitySnapshot,
    /// The remote's numbering toward the device.
    pub toward_user: SequenceShift,
    /// The retransmission stream toward the remote: SSRC and next number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<(u32, u16)>,
}

/// A session's streams, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSnapshot {
    /// Per stream.
    pub streams: Vec<StreamSnapshot>,
    /// Datagrams the session took in when this was taken: the control
    /// plane stores a session again only once it moved.
    pub packets_in: u64,
}
