//! A media worker: one thread, one mio event loop, owning the sockets of the
//! sessions pinned to it.
//!
//! Per datagram the worker does a slab lookup by token, runs the stream's
//! state machine on the receive buffer in place and queues the send; sends
//! to the same socket leave in one `sendmmsg`. No allocation, no lock and no
//! channel on that path. Commands from the control plane arrive on a bounded
//! channel with a mio `Waker`; events go back on a bounded channel with
//! `try_send`, and the few that must not be lost (a session's end, which
//! frees its ports) wait in a backlog bounded by the number of sessions.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use hdrhistogram::Histogram;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, warn};

use crate::SessionId;
use crate::ports::{LegSockets, PortLease};
use crate::stream::{
    Component, DropReason, LegConfig, LegId, LegReport, MAX_LEGS, PayloadMap, Side, Stream,
    StreamConfig, Verdict,
};
use crate::sys::{BATCH, BUF_LEN, RecvBatch, SendBatch};

/// The waker's token; socket tokens are slab keys, far below it.
pub(crate) const WAKER: Token = Token(usize::MAX);
/// How often timeouts are checked.
const TICK: Duration = Duration::from_millis(100);
/// `recvmmsg` calls on one socket per turn of the loop before the others get
/// their turn (fairness under load).
const BATCHES_PER_TURN: usize = 8;
/// Largest latency recorded, in nanoseconds (anything slower is clamped).
const LATENCY_MAX_NS: u64 = 10_000_000_000;
/// One forwarded batch in this many has its relay latency recorded.
const LATENCY_SAMPLING: u64 = 16;
/// How long the old device's sockets stay open after a switch, so its late
/// packets are counted as dropped rather than bounced with ICMP.
const RETIRE_GRACE: Duration = Duration::from_secs(2);
/// No socket in this slot.
const NO_TOKEN: usize = usize::MAX;

/// One leg as handed to a worker: its bound sockets and signalled peer.
#[derive(Debug)]
pub struct LegSetup {
    /// Bound sockets and their port lease.
    pub sockets: LegSockets,
    /// rtcp-mux and signalled addresses.
    pub config: LegConfig,
}

/// One stream as handed to a worker.
#[derive(Debug)]
pub struct StreamSetup {
    /// Learning window and NAT re-learning.
    pub config: StreamConfig,
    /// Clock rate by payload type.
    pub clock_rates: Vec<(u8, u32)>,
    /// The telephone-event payload type, if negotiated.
    pub telephone_event: Option<u8>,
    /// User leg, then remote leg.
    pub legs: [LegSetup; 2],
}

/// The new device's leg of one stream.
#[derive(Debug)]
pub struct PendingSetup {
    /// Its sockets and signalled address.
    pub leg: LegSetup,
    /// Its payload numbering against the remote's.
    pub payloads: PayloadMap,
}

/// When a transfer switches to the new device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchMode {
    /// On the new device's first media packet.
    FirstPacket,
    /// On an explicit commit.
    Commit,
}

/// Signalled addresses for one leg of one stream.
#[derive(Debug, Clone, Copy)]
pub struct PeerUpdate {
    /// Stream index.
    pub stream: usize,
    /// Which leg.
    pub side: Side,
    /// RTP address, if signalled.
    pub rtp: Option<SocketAddr>,
    /// RTCP address, if signalled.
    pub rtcp: Option<SocketAddr>,
    /// Whether the peer multiplexes RTCP on the RTP port, if that changes.
    pub rtcp_mux: Option<bool>,
}

/// A control-plane request to a worker.
#[derive(Debug)]
pub enum Command {
    /// Take over a session's sockets and start forwarding.
    Add {
        /// The session.
        id: SessionId,
        /// Its streams.
        streams: Vec<StreamSetup>,
        /// Answered once the sockets are registered.
        reply: oneshot::Sender<io::Result<()>>,
    },
    /// Apply signalling updates (and reopen learning windows).
    Update {
        /// The session.
        id: SessionId,
        /// Per leg.
        peers: Vec<PeerUpdate>,
        /// New clock rates by payload type, per stream index.
        clock_rates: Vec<(usize, Vec<(u8, u32)>)>,
        /// Puts the session on hold (the hold timeout applies) or takes it
        /// off; `None` leaves it.
        held: Option<bool>,
        /// `false` when the session is not on this worker (any more).
        reply: oneshot::Sender<bool>,
    },
    /// Open the new device's legs (one per stream, in order).
    BeginTransfer {
        /// The session.
        id: SessionId,
        /// One per stream.
        legs: Vec<PendingSetup>,
        /// When to switch.
        mode: SwitchMode,
        /// Roll back if not switched by then.
        timeout: Duration,
        /// Why not, if refused.
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Switch to the pending device now (commit mode).
    Commit {
        /// The session.
        id: SessionId,
        /// Why not, if refused.
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Roll back an open transfer.
    Cancel {
        /// The session.
        id: SessionId,
        /// Why not, if refused.
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// End a session: close its sockets, free its ports, report.
    Remove {
        /// The session.
        id: SessionId,
        /// Its final report, or `None` if it had ended already.
        reply: oneshot::Sender<Option<SessionReport>>,
    },
    /// Report on a session without changing it.
    Inspect {
        /// The session.
        id: SessionId,
        /// Its report, or `None` if it is not here.
        reply: oneshot::Sender<Option<SessionReport>>,
    },
    /// Worker-wide counters.
    Stats {
        /// The snapshot.
        reply: oneshot::Sender<WorkerStats>,
    },
    /// Fail as a bug would, by panicking, so that tests can check what the
    /// relay does then. Nothing in the relay sends it (see
    /// [`Dataplane::fail_worker_for_tests`](crate::Dataplane::fail_worker_for_tests)).
    #[doc(hidden)]
    Fail,
}

/// Why a session ended on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Media stopped for longer than the media timeout.
    MediaTimeout,
    /// No media ever arrived within the setup timeout.
    SetupTimeout,
}

impl EndReason {
    /// snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::MediaTimeout => "media_timeout",
            Self::SetupTimeout => "setup_timeout",
        }
    }
}

/// Something a worker tells the control plane.
#[derive(Debug)]
pub enum WorkerEvent {
    /// The new device took over.
    TransferCompleted {
        /// The session.
        id: SessionId,
        /// Last packet of the old device sent → first of the new one sent;
        /// `None` if a newer transfer began before the new device sent.
        gap: Option<Duration>,
        /// The session after the switch.
        report: SessionReport,
    },
    /// A transfer was rolled back by its timeout.
    TransferTimedOut {
        /// The session.
        id: SessionId,
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
    /// A worker thread failed (a bug: it panicked, or epoll failed). Its
    /// sessions are gone and their ports are free again; the control plane
    /// ends them and starts a new worker in its place.
    WorkerFailed {
        /// Worker number.
        worker: usize,
        /// The panic message or the error.
        reason: String,
    },
    /// A leg learned (or re-learned) its peer's address.
    SourceLatched {
        /// The session.
        id: SessionId,
        /// Stream index.
        stream: usize,
        /// What was learned.
        latched: crate::stream::Latched,
    },
}

/// A session's state, for `GetSession` and final statistics.
#[derive(Debug, Clone)]
pub struct SessionReport {
    /// Per stream: user leg, remote leg.
    pub streams: Vec<[LegReport; 2]>,
    /// Whether a transfer is open (not yet switched).
    pub transfer_pending: bool,
    /// Time since the last RTP on any leg (or since creation if none).
    pub idle: Duration,
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
    /// Worker events lost because the control plane's queue was full.
    pub events_lost: u64,
    /// Datagrams sent, by the side they went to (user, remote).
    pub packets_to: [u64; 2],
    /// Bytes sent, by the side they went to (user, remote).
    pub bytes_to: [u64; 2],
    /// Datagrams dropped, by reason (indexed like `DropReason::ALL`).
    pub drops: [u64; DropReason::COUNT],
    /// Sampled relay latency: (upper bound in ns, samples at or below it),
    /// cumulative, for `LATENCY_BUCKETS_NS`.
    pub latency_buckets: Vec<(u64, u64)>,
    /// Latency samples and their sum in ns.
    pub latency_count: u64,
    /// Sum of the latency samples in ns.
    pub latency_sum_ns: f64,
    /// CPU time the worker thread used, in seconds (user + system), if the
    /// system reports it.
    pub cpu_seconds: Option<f64>,
}

/// Bucket bounds of the exported latency histogram, in nanoseconds.
pub const LATENCY_BUCKETS_NS: [u64; 12] = [
    5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000, 50_000_000,
];

/// What one batch sent: (sent, failed), and per destination side the
/// datagrams and bytes.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    sent: u64,
    failed: u64,
    packets_to: [u64; 2],
    bytes_to: [u64; 2],
}

/// CPU time of the calling thread, from procfs.
fn thread_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // procfs counts in USER_HZ, which Linux fixes at 100 for user space
    // (what sysconf(_SC_CLK_TCK) reports).
    const USER_HZ: f64 = 100.0;
    Some((utime + stime) as f64 / USER_HZ)
}

struct SocketEntry {
    socket: UdpSocket,
    session: usize,
    stream: usize,
    leg: LegId,
    component: Component,
}

struct Transfer {
    mode: SwitchMode,
    deadline: Instant,
    switched: bool,
    /// When the old device's last packet went to the remote, at the switch.
    old_last_sent: Option<Instant>,
}

struct Session {
    id: SessionId,
    created: Instant,
    streams: Vec<Stream>,
    /// Socket tokens by stream, leg and component; with rtcp-mux the RTCP
    /// entry repeats the RTP token.
    tokens: Vec<[[usize; 2]; MAX_LEGS]>,
    /// Port leases by stream and leg, dropped after the leg's sockets close.
    leases: Vec<[Option<PortLease>; MAX_LEGS]>,
    transfer: Option<Transfer>,
    /// When the retired legs of the last switch close.
    retire_at: Option<Instant>,
    /// Every stream is on hold: no media is expected for a while.
    held: bool,
}

impl Session {
    /// Switches every stream to the pending device. Returns legs a switch
    /// removed outright (their sockets must close now).
    fn switch_all(&mut self, now: Instant, closed: &mut Vec<(usize, LegId)>) {
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        if transfer.switched {
            return;
        }
        transfer.switched = true;
        transfer.old_last_sent = self
            .streams
            .iter()
            .filter_map(Stream::last_toward_remote_at)
            .max();
        for (index, stream) in self.streams.iter_mut().enumerate() {
            stream.switch(now);
            if let Some(leg) = stream.take_closed() {
                closed.push((index, leg));
            }
        }
        self.retire_at = Some(now + RETIRE_GRACE);
    }
}

/// Timeouts applied by a worker.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// No RTP on any leg for this long ends a session that had media.
    pub media: Duration,
    /// No RTP at all for this long after creation ends a session.
    pub setup: Duration,
    /// Replaces both while every stream of a session is on hold.
    pub hold: Duration,
}

/// A queued send: the socket token, destination and which datagram (in the
/// receive batch, or in the fork buffers).
#[derive(Clone, Copy)]
struct Outgoing {
    token: usize,
    session: usize,
    stream: usize,
    leg: LegId,
    to: SocketAddr,
    index: usize,
}

const NO_OUTGOING: Outgoing = Outgoing {
    token: NO_TOKEN,
    session: 0,
    stream: 0,
    leg: 0,
    to: SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::UNSPECIFIED,
        0,
    )),
    index: 0,
};

pub(crate) struct Worker {
    index: usize,
    /// Never sleep in epoll (see `DataplaneConfig::busy_poll`).
    busy_poll: bool,
    poll: Poll,
    commands: Receiver<Command>,
    stop: Arc<AtomicBool>,
    events: mpsc::Sender<WorkerEvent>,
    timeouts: Timeouts,
    sockets: Slab<SocketEntry>,
    sessions: Slab<Session>,
    by_id: HashMap<SessionId, usize>,
    /// Events the control plane must get (they free ports or change who the
    /// user's device is) but whose queue was full.
    undelivered: Vec<WorkerEvent>,
    /// Copies of the remote's media for a pending device.
    forks: Box<[[u8; BUF_LEN]; BATCH]>,
    forwarded: u64,
    dropped: u64,
    packets_to: [u64; 2],
    bytes_to: [u64; 2],
    drops: [u64; DropReason::COUNT],
    events_lost: u64,
    latency: Histogram<u64>,
    /// Forwarded batches, for latency sampling.
    batches: u64,
}

impl Worker {
    pub(crate) fn new(
        index: usize,
        poll: Poll,
        commands: Receiver<Command>,
        events: mpsc::Sender<WorkerEvent>,
        timeouts: Timeouts,
        stop: Arc<AtomicBool>,
    ) -> io::Result<Self> {
        let latency = Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3)
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self {
            index,
            busy_poll: false,
            poll,
            commands,
            stop,
            events,
            timeouts,
            sockets: Slab::with_capacity(1024),
            sessions: Slab::with_capacity(256),
            by_id: HashMap::with_capacity(256),
            undelivered: Vec::new(),
            forks: Box::new([[0; BUF_LEN]; BATCH]),
            forwarded: 0,
            dropped: 0,
            packets_to: [0; 2],
            bytes_to: [0; 2],
            drops: [0; DropReason::COUNT],
            events_lost: 0,
            latency,
            batches: 0,
        })
    }

    pub(crate) fn busy_poll(mut self, enabled: bool) -> Self {
        self.busy_poll = enabled;
        self
    }

    /// Forwards until told to stop (`Ok`) or until epoll fails (`Err`).
    pub(crate) fn run(mut self) -> Result<(), String> {
        let mut events = Events::with_capacity(1024);
        let mut recv = RecvBatch::new();
        let mut send = SendBatch::new();
        // Sockets that still had data when their turn ended.
        let mut unfinished: Vec<usize> = Vec::with_capacity(1024);
        let mut retry: Vec<usize> = Vec::with_capacity(1024);
        let mut now = Instant::now();
        let mut next_tick = now + TICK;
        loop {
            // One clock read per wake-up, shared by everything in it: at 50
            // packets/s per stream a wake-up often carries one packet, and
            // reading the clock is a measurable part of its cost.
            let timeout = if unfinished.is_empty() && !self.busy_poll {
                next_tick.saturating_duration_since(now)
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                error!(worker = self.index, "poll failed, worker stopping: {e}");
                return Err(format!("epoll failed: {e}"));
            }
            now = Instant::now();
            std::mem::swap(&mut unfinished, &mut retry);
            for token in retry.drain(..) {
                self.drain(now, token, &mut recv, &mut send, &mut unfinished);
            }
            for event in &events {
                if event.token() == WAKER {
                    if !self.handle_commands() || self.stop.load(Ordering::Relaxed) {
                        self.shutdown();
                        return Ok(());
                    }
                } else {
                    self.drain(now, event.token().0, &mut recv, &mut send, &mut unfinished);
                }
            }
            if now >= next_tick {
                self.tick(now);
                next_tick = now + TICK;
            }
        }
    }

    /// Reads a socket until it is empty or its turn is over.
    fn drain(
        &mut self,
        now: Instant,
        token: usize,
        recv: &mut RecvBatch,
        send: &mut SendBatch,
        unfinished: &mut Vec<usize>,
    ) {
        for _ in 0..BATCHES_PER_TURN {
            let Some(entry) = self.sockets.get(token) else {
                return; // closed since the event was raised
            };
            let received = match recv.recv(entry.socket.as_fd()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors reported on the socket and the like: the
                    // socket itself is fine, try again on the next event.
                    debug!(worker = self.index, "recvmmsg: {e}");
                    return;
                }
            };
            self.process_batch(now, token, recv, received, send);
            if received < BATCH {
                // The queue was empty when the kernel returned; any later
                // datagram raises a new edge.
                return;
            }
        }
        unfinished.push(token);
    }

    fn process_batch(
        &mut self,
        received_at: Instant,
        token: usize,
        recv: &mut RecvBatch,
        received: usize,
        send: &mut SendBatch,
    ) {
        let Some(entry) = self.sockets.get(token) else {
            return;
        };
        let (session_key, stream_index, leg, component) =
            (entry.session, entry.stream, entry.leg, entry.component);
        let Some(session) = self.sessions.get_mut(session_key) else {
            return;
        };
        let id = session.id;
        let mut queued = [NO_OUTGOING; BATCH];
        let mut queued_count = 0;
        let mut forked = [NO_OUTGOING; BATCH];
        let mut forked_count = 0;
        let mut fork_lens = [0usize; BATCH];
        // Legs a switch removed outright; allocated only when that happens.
        let mut closed: Vec<(usize, LegId)> = Vec::new();
        for index in 0..received {
            let (source, truncated, buf, len) = recv.datagram(index);
            let Some(source) = source else { continue };
            let Some(stream) = session.streams.get_mut(stream_index) else {
                return;
            };
            if truncated {
                stream.record_drop(leg, DropReason::TooLarge, 1);
                self.dropped += 1;
                self.drops[DropReason::TooLarge as usize] += 1;
                continue;
            }
            let mut outcome = stream.on_packet(received_at, leg, component, source, buf, len);
            let first_packet_switch = session
                .transfer
                .as_ref()
                .is_some_and(|t| t.mode == SwitchMode::FirstPacket && !t.switched);
            if outcome.switch_requested && first_packet_switch {
                session.switch_all(received_at, &mut closed);
                debug!(worker = self.index, session = %id, "switched to the new device on its first packet");
                let stream = &mut session.streams[stream_index];
                // The packet that asked for the switch is the new device's
                // first: hand it in again, now from the current device.
                let latched = outcome.latched;
                outcome = stream.on_packet(received_at, leg, component, source, buf, len);
                outcome.latched = outcome.latched.or(latched);
            }
            if let Some(latched) = outcome.latched {
                let event = WorkerEvent::SourceLatched {
                    id,
                    stream: stream_index,
                    latched,
                };
                if self.events.try_send(event).is_err() {
                    self.events_lost += 1;
                }
            }
            if outcome.new_device_started
                && let Some(transfer) = session.transfer.take_if(|t| t.switched)
            {
                let gap = transfer
                    .old_last_sent
                    .map(|at| received_at.saturating_duration_since(at));
                let report = report_of(session, received_at);
                deliver(
                    &self.events,
                    &mut self.undelivered,
                    WorkerEvent::TransferCompleted { id, gap, report },
                );
            }
            match outcome.verdict {
                Verdict::Forward {
                    leg: out_leg,
                    component: out_component,
                    to,
                    len: new_len,
                    fork,
                } => {
                    recv.set_len(index, new_len);
                    queued[queued_count] = Outgoing {
                        token: session.tokens[stream_index][out_leg][out_component as usize],
                        session: session_key,
                        stream: stream_index,
                        leg: out_leg,
                        to,
                        index,
                    };
                    queued_count += 1;
                    if let Some(fork) = fork {
                        fork_lens[forked_count] = new_len;
                        let copy = &mut self.forks[forked_count][..new_len];
                        copy.copy_from_slice(recv.bytes(index));
                        copy[1] = (copy[1] & 0x80) | (fork.payload_type & 0x7f);
                        forked[forked_count] = Outgoing {
                            token: session.tokens[stream_index][fork.leg][Component::Rtp as usize],
                            session: session_key,
                            stream: stream_index,
                            leg: fork.leg,
                            to: fork.to,
                            index: forked_count,
                        };
                        forked_count += 1;
                    }
                }
                Verdict::Drop(reason) => {
                    self.dropped += 1;
                    self.drops[reason as usize] += 1;
                }
            }
        }
        for (stream, leg) in closed {
            self.close_leg(session_key, stream, leg);
        }
        let mut totals = Totals::default();
        send_runs(
            &self.sockets,
            &mut self.sessions,
            &queued[..queued_count],
            |i| recv.bytes(i),
            send,
            &mut totals,
        );
        let forks = &self.forks;
        send_runs(
            &self.sockets,
            &mut self.sessions,
            &forked[..forked_count],
            |i| &forks[i][..fork_lens[i]],
            send,
            &mut totals,
        );
        self.forwarded += totals.sent;
        self.dropped += totals.failed;
        self.drops[DropReason::SendFailed as usize] += totals.failed;
        for side in 0..2 {
            self.packets_to[side] += totals.packets_to[side];
            self.bytes_to[side] += totals.bytes_to[side];
        }
        let total = queued_count + forked_count;
        if total > 0 {
            // Latency takes a second clock read, so it is sampled: one batch
            // in LATENCY_SAMPLING, weighted by its packets.
            self.batches = self.batches.wrapping_add(1);
            if self.batches % LATENCY_SAMPLING == 0 {
                let elapsed = u64::try_from(received_at.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let _ = self
                    .latency
                    .record_n(elapsed.clamp(1, LATENCY_MAX_NS), total as u64);
            }
        }
    }

    /// Runs queued commands; false when the worker must stop.
    fn handle_commands(&mut self) -> bool {
        loop {
            let command = match self.commands.try_recv() {
                Ok(command) => command,
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            };
            let now = Instant::now();
            match command {
                Command::Add { id, streams, reply } => {
                    let result = self.add_session(id, streams);
                    let _ = reply.send(result);
                }
                Command::Update {
                    id,
                    peers,
                    clock_rates,
                    held,
                    reply,
                } => {
                    let found = match self.by_id.get(&id).and_then(|&k| self.sessions.get_mut(k)) {
                        Some(session) => {
                            for update in peers {
                                if let Some(stream) = session.streams.get_mut(update.stream) {
                                    stream.update_leg(
                                        now,
                                        update.side,
                                        update.rtp,
                                        update.rtcp,
                                        update.rtcp_mux,
                                    );
                                }
                            }
                            if let Some(held) = held {
                                session.held = held;
                            }
                            for (index, rates) in clock_rates {
                                if let Some(stream) = session.streams.get_mut(index) {
                                    stream.set_clock_rates(&rates);
                                }
                            }
                            true
                        }
                        None => false,
                    };
                    let _ = reply.send(found);
                }
                Command::BeginTransfer {
                    id,
                    legs,
                    mode,
                    timeout,
                    reply,
                } => {
                    let result = self.begin_transfer(now, id, legs, mode, timeout);
                    let _ = reply.send(result);
                }
                Command::Commit { id, reply } => {
                    let result = self.commit(now, id);
                    let _ = reply.send(result);
                }
                Command::Cancel { id, reply } => {
                    let result = match self.by_id.get(&id).copied() {
                        None => Err("the session has ended".to_owned()),
                        Some(key) => match &self.sessions[key].transfer {
                            Some(t) if !t.switched => {
                                self.roll_back(key);
                                Ok(())
                            }
                            Some(_) | None => Err("no transfer is pending".to_owned()),
                        },
                    };
                    let _ = reply.send(result);
                }
                Command::Remove { id, reply } => {
                    let report = self.by_id.get(&id).copied().map(|key| {
                        let report = report_of(&self.sessions[key], now);
                        self.remove_session(key);
                        report
                    });
                    let _ = reply.send(report);
                }
                Command::Inspect { id, reply } => {
                    let report = self
                        .by_id
                        .get(&id)
                        .map(|&key| report_of(&self.sessions[key], now));
                    let _ = reply.send(report);
                }
                Command::Stats { reply } => {
                    let _ = reply.send(self.stats());
                }
                Command::Fail => {
                    panic!("media worker {} told to fail (a test)", self.index)
                }
            }
        }
    }

    fn add_session(&mut self, id: SessionId, streams: Vec<StreamSetup>) -> io::Result<()> {
        let now = Instant::now();
        let key = self.sessions.vacant_key();
        let mut session = Session {
            id,
            created: now,
            streams: Vec::with_capacity(streams.len()),
            tokens: Vec::with_capacity(streams.len()),
            leases: Vec::with_capacity(streams.len()),
            transfer: None,
            retire_at: None,
            held: false,
        };
        let mut registered = Vec::new();
        let mut result = Ok(());
        for (stream_index, setup) in streams.into_iter().enumerate() {
            let [user, remote] = setup.legs;
            session.streams.push(Stream::new(
                now,
                setup.config,
                user.config,
                remote.config,
                &setup.clock_rates,
                setup.telephone_event,
            ));
            session.tokens.push([[NO_TOKEN; 2]; MAX_LEGS]);
            session.leases.push([None, None, None, None]);
            for (leg, setup) in [
                (crate::stream::FIRST_USER_LEG, user),
                (crate::stream::REMOTE_LEG, remote),
            ] {
                if let Err(e) = self.install_leg(
                    &mut session,
                    key,
                    stream_index,
                    leg,
                    setup.sockets,
                    &mut registered,
                ) {
                    result = Err(e);
                }
            }
        }
        if let Err(e) = result {
            for token in registered {
                let mut entry = self.sockets.remove(token);
                let _ = self.poll.registry().deregister(&mut entry.socket);
            }
            return Err(e);
        }
        self.sessions.insert(session);
        self.by_id.insert(id, key);
        Ok(())
    }

    /// Registers a leg's sockets and keeps its lease.
    fn install_leg(
        &mut self,
        session: &mut Session,
        key: usize,
        stream: usize,
        leg: LegId,
        sockets: LegSockets,
        registered: &mut Vec<usize>,
    ) -> io::Result<()> {
        let LegSockets { rtp, rtcp, lease } = sockets;
        session.leases[stream][leg] = Some(lease);
        let rtp_token = self.register(rtp, key, stream, leg, Component::Rtp)?;
        registered.push(rtp_token);
        let rtcp_token = match rtcp {
            Some(rtcp) => {
                let token = self.register(rtcp, key, stream, leg, Component::Rtcp)?;
                registered.push(token);
                token
            }
            None => rtp_token,
        };
        session.tokens[stream][leg] = [rtp_token, rtcp_token];
        Ok(())
    }

    fn register(
        &mut self,
        socket: std::net::UdpSocket,
        session: usize,
        stream: usize,
        leg: LegId,
        component: Component,
    ) -> io::Result<usize> {
        let mut socket = UdpSocket::from_std(socket);
        let entry = self.sockets.vacant_entry();
        let token = entry.key();
        self.poll
            .registry()
            .register(&mut socket, Token(token), Interest::READABLE)?;
        entry.insert(SocketEntry {
            socket,
            session,
            stream,
            leg,
            component,
        });
        Ok(token)
    }

    fn begin_transfer(
        &mut self,
        now: Instant,
        id: SessionId,
        legs: Vec<PendingSetup>,
        mode: SwitchMode,
        timeout: Duration,
    ) -> Result<(), String> {
        let key = *self.by_id.get(&id).ok_or("the session has ended")?;
        let mut session = self
            .sessions
            .try_remove(key)
            .ok_or("the session has ended")?;
        let result = (|| {
            if session.transfer.as_ref().is_some_and(|t| !t.switched) {
                return Err("a transfer is already pending on this session".to_owned());
            }
            if legs.len() != session.streams.len() {
                return Err(format!(
                    "the session has {} streams, the transfer gave {}",
                    session.streams.len(),
                    legs.len()
                ));
            }
            if session.transfer.take().is_some() {
                // Switched, but the new device never sent: report it now.
                deliver(
                    &self.events,
                    &mut self.undelivered,
                    WorkerEvent::TransferCompleted {
                        id,
                        gap: None,
                        report: report_of(&session, now),
                    },
                );
            }
            // A retired leg still in its grace period makes room now.
            for index in 0..session.streams.len() {
                if let Some(leg) = session.streams[index].close_retired() {
                    self.close_session_leg(&mut session, index, leg);
                }
            }
            session.retire_at = None;
            let mut registered = Vec::new();
            for (index, pending) in legs.into_iter().enumerate() {
                let leg = session.streams[index]
                    .add_pending(now, pending.leg.config, pending.payloads)
                    .ok_or("no free leg slot")?;
                self.install_leg(
                    &mut session,
                    key,
                    index,
                    leg,
                    pending.leg.sockets,
                    &mut registered,
                )
                .map_err(|e| format!("cannot register the new device's sockets: {e}"))?;
            }
            session.transfer = Some(Transfer {
                mode,
                deadline: now + timeout,
                switched: false,
                old_last_sent: None,
            });
            Ok(())
        })();
        if result.is_err() {
            for index in 0..session.streams.len() {
                if let Some(leg) = session.streams[index].cancel_pending() {
                    self.close_session_leg(&mut session, index, leg);
                }
            }
            session.transfer = session.transfer.take().filter(|t| t.switched);
        }
        self.reinsert(key, session);
        result
    }

    fn commit(&mut self, now: Instant, id: SessionId) -> Result<(), String> {
        let key = *self.by_id.get(&id).ok_or("the session has ended")?;
        let session = &mut self.sessions[key];
        match &session.transfer {
            Some(t) if !t.switched => {}
            Some(_) | None => return Err("no transfer is pending".to_owned()),
        }
        let mut closed = Vec::new();
        session.switch_all(now, &mut closed);
        for (stream, leg) in closed {
            self.close_leg(key, stream, leg);
        }
        Ok(())
    }

    /// Rolls back an open transfer: the new device's legs close, the current
    /// device is untouched.
    fn roll_back(&mut self, key: usize) {
        let Some(mut session) = self.sessions.try_remove(key) else {
            return;
        };
        for index in 0..session.streams.len() {
            if let Some(leg) = session.streams[index].cancel_pending() {
                self.close_session_leg(&mut session, index, leg);
            }
        }
        session.transfer = None;
        self.reinsert(key, session);
    }

    /// Puts back a session taken out with `try_remove(key)` (to borrow it
    /// beside the socket table). The slab hands out the key freed last, so
    /// it lands under the same key, which socket entries and `by_id` name.
    fn reinsert(&mut self, key: usize, session: Session) {
        let reinserted = self.sessions.insert(session);
        assert_eq!(reinserted, key, "a session moved in the slab");
    }

    fn close_leg(&mut self, key: usize, stream: usize, leg: LegId) {
        if let Some(mut session) = self.sessions.try_remove(key) {
            self.close_session_leg(&mut session, stream, leg);
            self.reinsert(key, session);
        }
    }

    /// Closes a leg's sockets, then frees its ports.
    fn close_session_leg(&mut self, session: &mut Session, stream: usize, leg: LegId) {
        let tokens = std::mem::replace(&mut session.tokens[stream][leg], [NO_TOKEN; 2]);
        for (i, &token) in tokens.iter().enumerate() {
            // With rtcp-mux the RTCP token repeats the RTP one.
            if token == NO_TOKEN || (i == 1 && token == tokens[0]) {
                continue;
            }
            if let Some(mut entry) = self.sockets.try_remove(token) {
                let _ = self.poll.registry().deregister(&mut entry.socket);
            }
        }
        drop(session.leases[stream][leg].take());
    }

    /// Closes a session's sockets, then returns its ports to the pool.
    fn remove_session(&mut self, key: usize) {
        let mut session = self.sessions.remove(key);
        self.by_id.remove(&session.id);
        for stream in 0..session.streams.len() {
            for leg in 0..MAX_LEGS {
                self.close_session_leg(&mut session, stream, leg);
            }
        }
    }

    fn tick(&mut self, now: Instant) {
        // Deliver events the control plane could not take before.
        let backlog = std::mem::take(&mut self.undelivered);
        for event in backlog {
            deliver(&self.events, &mut self.undelivered, event);
        }
        let mut expired = Vec::new();
        let mut transfers_timed_out = Vec::new();
        let mut retiring = Vec::new();
        for (key, session) in &mut self.sessions {
            for stream in &mut session.streams {
                stream.tick(now);
            }
            if session
                .transfer
                .as_ref()
                .is_some_and(|t| !t.switched && now >= t.deadline)
            {
                transfers_timed_out.push(key);
            }
            if session.retire_at.is_some_and(|at| now >= at) {
                session.retire_at = None;
                retiring.push(key);
            }
            let last_media = session.streams.iter().filter_map(Stream::last_rtp_at).max();
            let (media_limit, setup_limit) = if session.held {
                (self.timeouts.hold, self.timeouts.hold)
            } else {
                (self.timeouts.media, self.timeouts.setup)
            };
            let reason = match last_media {
                Some(at) if now.saturating_duration_since(at) >= media_limit => {
                    Some(EndReason::MediaTimeout)
                }
                None if now.saturating_duration_since(session.created) >= setup_limit => {
                    Some(EndReason::SetupTimeout)
                }
                Some(_) | None => None,
            };
            if let Some(reason) = reason {
                expired.push((key, reason));
            }
        }
        for key in retiring {
            let streams = self.sessions[key].streams.len();
            for index in 0..streams {
                if let Some(leg) = self.sessions[key].streams[index].close_retired() {
                    self.close_leg(key, index, leg);
                }
            }
        }
        for key in transfers_timed_out {
            let id = self.sessions[key].id;
            self.roll_back(key);
            debug!(worker = self.index, session = %id, "transfer timed out; rolled back");
            deliver(
                &self.events,
                &mut self.undelivered,
                WorkerEvent::TransferTimedOut { id },
            );
        }
        for (key, reason) in expired {
            let report = report_of(&self.sessions[key], now);
            let id = self.sessions[key].id;
            self.remove_session(key);
            debug!(worker = self.index, session = %id, reason = reason.name(), "session ended");
            deliver(
                &self.events,
                &mut self.undelivered,
                WorkerEvent::SessionEnded { id, reason, report },
            );
        }
    }

    fn stats(&self) -> WorkerStats {
        let h = &self.latency;
        WorkerStats {
            sessions: self.sessions.len(),
            forwarded: self.forwarded,
            dropped: self.dropped,
            latency_ns: [
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.9),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max(),
            ],
            events_lost: self.events_lost,
            packets_to: self.packets_to,
            bytes_to: self.bytes_to,
            drops: self.drops,
            latency_buckets: LATENCY_BUCKETS_NS
                .iter()
                .map(|&bound| (bound, h.count_between(0, bound)))
                .collect(),
            latency_count: h.len(),
            latency_sum_ns: h.mean() * h.len() as f64,
            cpu_seconds: thread_cpu_seconds(),
        }
    }

    fn shutdown(&mut self) {
        let keys: Vec<usize> = self.sessions.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.remove_session(key);
        }
    }
}

/// Queues an event the control plane must not miss; if its queue is full,
/// keeps it for the next tick (bounded: one per session end or transfer).
fn deliver(
    events: &mpsc::Sender<WorkerEvent>,
    undelivered: &mut Vec<WorkerEvent>,
    event: WorkerEvent,
) {
    use mpsc::error::TrySendError;
    if let Err(TrySendError::Full(event) | TrySendError::Closed(event)) = events.try_send(event) {
        if undelivered.is_empty() {
            warn!("control plane busy; holding worker events");
        }
        undelivered.push(event);
    }
}

fn report_of(session: &Session, now: Instant) -> SessionReport {
    let last_media = session
        .streams
        .iter()
        .filter_map(Stream::last_rtp_at)
        .max()
        .unwrap_or(session.created);
    SessionReport {
        streams: session
            .streams
            .iter()
            .map(|s| {
                [
                    s.leg_report(now, Side::User),
                    s.leg_report(now, Side::Remote),
                ]
            })
            .collect(),
        transfer_pending: session.transfer.as_ref().is_some_and(|t| !t.switched),
        idle: now.saturating_duration_since(last_media),
    }
}

/// Sends queued datagrams, one `sendmmsg` per run of the same socket, and
/// accounts them on their legs and in `totals`.
fn send_runs<'a>(
    sockets: &Slab<SocketEntry>,
    sessions: &mut Slab<Session>,
    queued: &[Outgoing],
    bytes: impl Fn(usize) -> &'a [u8],
    send: &mut SendBatch,
    totals: &mut Totals,
) {
    let mut start = 0;
    while start < queued.len() {
        let token = queued[start].token;
        let end = start
            + queued[start..]
                .iter()
                .take_while(|q| q.token == token)
                .count();
        let mut packets: [(SocketAddr, &[u8]); BATCH] = [(NO_OUTGOING.to, &[]); BATCH];
        for (slot, q) in packets.iter_mut().zip(&queued[start..end]) {
            *slot = (q.to, bytes(q.index));
        }
        let run = &queued[start];
        match sockets.get(token) {
            Some(entry) => {
                let outcome = send.send(entry.socket.as_fd(), &packets[..end - start]);
                totals.sent += outcome.sent as u64;
                totals.failed += outcome.failed as u64;
                if let Some(stream) = sessions
                    .get_mut(run.session)
                    .and_then(|s| s.streams.get_mut(run.stream))
                {
                    let side = if stream.leg_of(Side::Remote) == run.leg {
                        Side::Remote
                    } else {
                        Side::User
                    };
                    totals.packets_to[side as usize] += outcome.sent as u64;
                    totals.bytes_to[side as usize] += outcome.sent_bytes as u64;
                    stream.record_sent(run.leg, outcome.sent as u64, outcome.sent_bytes as u64);
                    if outcome.failed > 0 {
                        stream.record_drop(run.leg, DropReason::SendFailed, outcome.failed as u64);
                    }
                }
            }
            None => totals.failed += (end - start) as u64,
        }
        start = end;
    }
}
