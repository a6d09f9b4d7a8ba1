//! What the control plane and the media workers exchange: the set-up of a
//! session or a transfer going in, events and statistics coming out, and
//! the errors of the data plane's API. Plain data, shared by the
//! [`Dataplane`](crate::Dataplane) handle and the [`worker`](crate::io::worker)
//! threads.

use std::time::Duration;

use crate::core::bundle::BundleTag;
use crate::core::ids::{LegId, Party, SessionId, StreamIndex, TransferId, WorkerId};
use crate::core::session::{
    EndReason, Latched, PendingLeg, SessionReport, SessionUpdate, StreamParams, SwitchMode,
    TransferError,
};
use crate::core::snapshot::SessionSnapshot;
use crate::core::srtp::Suite;
use crate::core::stream::DropReason;
use crate::core::stream::PayloadMap;
use crate::io::ports::LegSockets;

/// Bucket bounds of the exported latency histogram, in nanoseconds.
pub const LATENCY_BUCKETS_NS: [u64; 12] = [
    5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000, 50_000_000,
];

/// One stream of a new session: its parameters and its two legs' sockets
/// (the device's, the remote's).
#[derive(Debug)]
pub struct StreamSetup {
    /// Codecs, peers, source policy.
    pub params: StreamParams,
    /// Bound sockets: device leg, remote leg. `None` for a leg that rides
    /// an earlier stream's transport (its `bundle` tag names which).
    pub sockets: [Option<LegSockets>; 2],
    /// Per leg (device, remote): the BUNDLE transport it is on, if any.
    pub bundle: [Option<BundleTag>; 2],
}

/// A session another relay process served, going on here (high
/// availability): where its media stood, how long ago that was, and the
/// signalling state to apply before its first packet.
#[derive(Debug, Default)]
pub struct Resume {
    /// Its media state when stored.
    pub snapshot: SessionSnapshot,
    /// How long ago that was.
    pub since: Duration,
    /// Hold, T.38 datagrams, blocks: applied first.
    pub update: SessionUpdate,
    /// Streams whose current device numbers payload types its own way (a
    /// transfer brought it): its map against the remote's numbering.
    pub device_payloads: Vec<(StreamIndex, PayloadMap)>,
}

/// The new device's leg of one stream in a transfer.
#[derive(Debug)]
pub struct TransferLeg {
    /// Its peer, crypto and payload numbering.
    pub leg: PendingLeg,
    /// Its bound sockets; `None` if it rides an earlier stream's
    /// transport (see `bundle`).
    pub sockets: Option<LegSockets>,
    /// The BUNDLE transport it is on, if any.
    pub bundle: Option<BundleTag>,
}

/// A transfer to open: its id, one leg per stream with its sockets, when to
/// switch, when to give up.
#[derive(Debug)]
pub struct TransferSetup {
    /// The control plane's id for it.
    pub transfer: TransferId,
    /// Per stream, in order.
    pub legs: Vec<TransferLeg>,
    /// When to switch.
    pub mode: SwitchMode,
    /// Roll back if not switched by then.
    pub timeout: Duration,
}

/// Why the data plane did not do what was asked. Mapped to status codes in
/// one place, by the control plane.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataplaneError {
    /// The worker's command queue is full.
    #[error("media worker {0} is overloaded (command queue full)")]
    Busy(WorkerId),
    /// The worker has stopped (it failed and is being replaced, or the
    /// relay is shutting down).
    #[error("media worker {0} has stopped")]
    Stopped(WorkerId),
    /// The worker did not answer within
    /// [`REPLY_TIMEOUT`](crate::dataplane::REPLY_TIMEOUT).
    #[error("media worker {0} did not answer in time")]
    NoAnswer(WorkerId),
    /// The session is not on its worker (it has ended).
    #[error("session {0} is not on its media worker (it has ended)")]
    NoSession(SessionId),
    /// A session with this id is on the worker already.
    #[error("session {0} exists on its media worker already")]
    Exists(SessionId),
    /// The session refused the transfer command.
    #[error(transparent)]
    Transfer(TransferError),
    /// Sockets could not be registered with the worker's event loop.
    #[error("cannot register sockets: {0}")]
    Sockets(String),
}

/// Something a worker tells the control plane.
#[derive(Debug)]
pub enum WorkerEvent {
    /// A transfer's new device took over.
    TransferCompleted {
        /// The session.
        id: SessionId,
        /// The transfer.
        transfer: TransferId,
        /// Last packet of the old device sent → first of the new one sent;
        /// `None` if a newer transfer began before the new device sent.
        gap: Option<Duration>,
    },
    /// A transfer was rolled back by its timeout.
    TransferTimedOut {
        /// The session.
        id: SessionId,
        /// The transfer.
        transfer: TransferId,
    },
    /// A session ended on its own; its ports are free.
    SessionEnded {
        /// The session.
        id: SessionId,
        /// Why.
        reason: EndReason,
        /// Its final report.
        report: SessionReport,
    },
    /// A session was removed by a `remove_session` whose caller had
    /// stopped waiting (its reply timed out): the control plane ends the
    /// record too.
    SessionRemoved {
        /// The session.
        id: SessionId,
        /// Its final report.
        report: SessionReport,
    },
    /// A worker thread failed (a bug: it panicked, or epoll failed). Its
    /// sessions are gone and their ports are free again; the control plane
    /// ends them and starts a new worker in its place.
    WorkerFailed {
        /// Worker slot.
        worker: WorkerId,
        /// The panic message or the error.
        reason: String,
    },
    /// A WebRTC leg's DTLS handshake completed: its SRTP keys are in.
    DtlsConnected {
        /// The session.
        id: SessionId,
        /// The stream.
        stream: StreamIndex,
        /// The leg.
        leg: LegId,
        /// The SRTP suite the handshake chose.
        suite: Suite,
    },
    /// A WebRTC leg's DTLS handshake failed (the certificate did not match
    /// the fingerprint, the peer gave up, it timed out): the leg has no
    /// keys and its media stays dropped.
    DtlsFailed {
        /// The session.
        id: SessionId,
        /// The stream.
        stream: StreamIndex,
        /// The leg.
        leg: LegId,
        /// Why.
        reason: String,
    },
    /// An ICE leg's peer stopped renewing consent for 30 s (RFC 7675):
    /// nothing more is sent to it until it checks in again.
    ConsentExpired {
        /// The session.
        id: SessionId,
        /// The stream.
        stream: StreamIndex,
        /// The leg.
        leg: LegId,
        /// The party it faces.
        party: Party,
    },
    /// A leg learned (or re-learned) its peer's address.
    SourceLatched {
        /// The session.
        id: SessionId,
        /// The stream.
        stream: StreamIndex,
        /// What was learned.
        latched: Latched,
    },
}

/// Worker-wide counters.
#[derive(Debug, Clone)]
pub struct WorkerStats {
    /// Sessions on this worker.
    pub sessions: usize,
    /// Datagrams forwarded since start.
    pub forwarded: u64,
    /// Datagrams dropped since start, all reasons.
    pub dropped: u64,
    /// Receive-to-send latency percentiles in nanoseconds: p50, p90, p99,
    /// p99.9, max.
    pub latency_ns: [u64; 5],
    /// Worker events lost because a queue was full.
    pub events_lost: u64,
    /// Datagrams sent, by the party they went to (user, remote).
    pub packets_to: [u64; 2],
    /// Bytes sent, by the party they went to (user, remote).
    pub bytes_to: [u64; 2],
    /// Datagrams dropped, by reason (indexed like `DropReason::ALL`).
    pub drops: [u64; DropReason::COUNT],
    /// Sampled relay latency: (upper bound in ns, samples at or below it),
    /// cumulative, for [`LATENCY_BUCKETS_NS`].
    pub latency_buckets: Vec<(u64, u64)>,
    /// Latency samples.
    pub latency_count: u64,
    /// Sum of the latency samples in ns.
    pub latency_sum_ns: f64,
    /// CPU time the worker thread used, in seconds (user + system), if the
    /// system reports it.
    pub cpu_seconds: Option<f64>,
    /// The kernel fast path's share of this worker's streams.
    pub kernel: KernelWorkerStats,
    /// Datagrams the worker's lanes forwarded (also in `forwarded`, as
    /// their sessions take them in).
    pub lane_packets: u64,
    /// Lanes open now.
    pub lanes: usize,
}

/// A worker's kernel fast path counters. The kernel's packets and bytes
/// are also in the worker's `forwarded`, `packets_to` and `bytes_to`, as
/// they are read back (about once a second per session).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelWorkerStats {
    /// Routes installed now.
    pub routes: usize,
    /// Routes installed since start.
    pub installed: u64,
    /// Routes ended since start (a change, an unusual packet, the end).
    pub removed: u64,
    /// Packets the kernel forwarded, as read back.
    pub forwarded: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Map operations that failed.
    pub errors: u64,
}
