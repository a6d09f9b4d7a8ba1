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
use crate::ports::LegSockets;
use crate::stream::{
    Component, DropReason, LegConfig, LegReport, Side, Stream, StreamConfig, Verdict,
};
use crate::sys::{BATCH, RecvBatch, SendBatch};

/// The waker's token; socket tokens are slab keys, far below it.
pub(crate) const WAKER: Token = Token(usize::MAX);
/// How often timeouts are checked.
const TICK: Duration = Duration::from_millis(200);
/// `recvmmsg` calls on one socket per turn of the loop before the others get
/// their turn (fairness under load).
const BATCHES_PER_TURN: usize = 8;
/// Largest latency recorded, in nanoseconds (anything slower is clamped).
const LATENCY_MAX_NS: u64 = 10_000_000_000;

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
    /// User leg, then remote leg.
    pub legs: [LegSetup; 2],
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
        /// `false` when the session is not on this worker (any more).
        reply: oneshot::Sender<bool>,
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
    /// A session ended on its own; its ports are free.
    SessionEnded {
        /// The session.
        id: SessionId,
        /// Why.
        reason: EndReason,
        /// Its final report.
        report: SessionReport,
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
}

struct SocketEntry {
    socket: UdpSocket,
    session: usize,
    stream: usize,
    side: Side,
    component: Component,
}

struct Session {
    id: SessionId,
    created: Instant,
    streams: Vec<Stream>,
    /// Socket tokens by stream, side and component; with rtcp-mux the RTCP
    /// entry repeats the RTP token.
    tokens: Vec<[[usize; 2]; 2]>,
    /// Declared after nothing that needs it: dropped only once the socket
    /// entries are removed (see `remove_session`).
    leases: Vec<crate::ports::PortLease>,
}

/// Timeouts applied by a worker.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// No RTP on any leg for this long ends a session that had media.
    pub media: Duration,
    /// No RTP at all for this long after creation ends a session.
    pub setup: Duration,
}

/// A queued send: the socket token, destination and which received datagram.
#[derive(Clone, Copy)]
struct Outgoing {
    token: usize,
    session: usize,
    stream: usize,
    side: Side,
    to: SocketAddr,
    index: usize,
}

pub(crate) struct Worker {
    index: usize,
    poll: Poll,
    commands: Receiver<Command>,
    stop: Arc<AtomicBool>,
    events: mpsc::Sender<WorkerEvent>,
    timeouts: Timeouts,
    sockets: Slab<SocketEntry>,
    sessions: Slab<Session>,
    by_id: HashMap<SessionId, usize>,
    /// Session ends not yet accepted by the control plane's queue.
    undelivered: Vec<WorkerEvent>,
    forwarded: u64,
    dropped: u64,
    events_lost: u64,
    latency: Histogram<u64>,
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
            poll,
            commands,
            events,
            timeouts,
            stop,
            sockets: Slab::with_capacity(1024),
            sessions: Slab::with_capacity(256),
            by_id: HashMap::with_capacity(256),
            undelivered: Vec::new(),
            forwarded: 0,
            dropped: 0,
            events_lost: 0,
            latency,
        })
    }

    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut recv = RecvBatch::new();
        let mut send = SendBatch::new();
        // Sockets that still had data when their turn ended.
        let mut unfinished: Vec<usize> = Vec::with_capacity(1024);
        let mut retry: Vec<usize> = Vec::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        loop {
            let timeout = if unfinished.is_empty() {
                next_tick.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                error!(worker = self.index, "poll failed, worker stopping: {e}");
                return;
            }
            std::mem::swap(&mut unfinished, &mut retry);
            for token in retry.drain(..) {
                self.drain(token, &mut recv, &mut send, &mut unfinished);
            }
            for event in &events {
                if event.token() == WAKER {
                    if !self.handle_commands() || self.stop.load(Ordering::Relaxed) {
                        self.shutdown();
                        return;
                    }
                } else {
                    self.drain(event.token().0, &mut recv, &mut send, &mut unfinished);
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                self.tick(now);
                next_tick = now + TICK;
            }
        }
    }

    /// Reads a socket until it is empty or its turn is over.
    fn drain(
        &mut self,
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
            self.process_batch(token, recv, received, send);
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
        token: usize,
        recv: &mut RecvBatch,
        received: usize,
        send: &mut SendBatch,
    ) {
        let received_at = Instant::now();
        let Some(entry) = self.sockets.get(token) else {
            return;
        };
        let (session_key, stream_index, side, component) =
            (entry.session, entry.stream, entry.side, entry.component);
        let Some(session) = self.sessions.get_mut(session_key) else {
            return;
        };
        let id = session.id;
        let Some(stream) = session.streams.get_mut(stream_index) else {
            return;
        };
        let mut queued = [Outgoing {
            token: 0,
            session: 0,
            stream: 0,
            side: Side::User,
            to: SocketAddr::from(([0, 0, 0, 0], 0)),
            index: 0,
        }; BATCH];
        let mut queued_count = 0;
        for index in 0..received {
            let (source, truncated, bytes) = recv.datagram(index);
            let Some(source) = source else { continue };
            if truncated {
                stream.record_drop(side, DropReason::TooLarge, 1);
                self.dropped += 1;
                continue;
            }
            let (verdict, latched) = stream.on_packet(received_at, side, component, source, bytes);
            if let Some(latched) = latched {
                let event = WorkerEvent::SourceLatched {
                    id,
                    stream: stream_index,
                    latched,
                };
                if self.events.try_send(event).is_err() {
                    self.events_lost += 1;
                }
            }
            match verdict {
                Verdict::Forward {
                    side: out_side,
                    component: out_component,
                    to,
                } => {
                    queued[queued_count] = Outgoing {
                        token: session.tokens[stream_index][out_side as usize]
                            [out_component as usize],
                        session: session_key,
                        stream: stream_index,
                        side: out_side,
                        to,
                        index,
                    };
                    queued_count += 1;
                }
                Verdict::Drop(_) => self.dropped += 1,
            }
        }
        self.send_queued(&queued[..queued_count], recv, send);
        if queued_count > 0 {
            let elapsed = u64::try_from(received_at.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let _ = self
                .latency
                .record_n(elapsed.clamp(1, LATENCY_MAX_NS), queued_count as u64);
        }
    }

    /// Sends queued datagrams, one `sendmmsg` per run of the same socket.
    fn send_queued(&mut self, queued: &[Outgoing], recv: &RecvBatch, send: &mut SendBatch) {
        let mut start = 0;
        while start < queued.len() {
            let token = queued[start].token;
            let end = start
                + queued[start..]
                    .iter()
                    .take_while(|q| q.token == token)
                    .count();
            let mut packets: [(SocketAddr, &[u8]); BATCH] =
                [(SocketAddr::from(([0, 0, 0, 0], 0)), &[]); BATCH];
            for (slot, q) in packets.iter_mut().zip(&queued[start..end]) {
                *slot = (q.to, recv.bytes(q.index));
            }
            let run = &queued[start];
            if let Some(entry) = self.sockets.get(token) {
                let outcome = send.send(entry.socket.as_fd(), &packets[..end - start]);
                self.forwarded += outcome.sent as u64;
                self.dropped += outcome.failed as u64;
                if let Some(stream) = self
                    .sessions
                    .get_mut(run.session)
                    .and_then(|s| s.streams.get_mut(run.stream))
                {
                    stream.record_sent(run.side, outcome.sent as u64, outcome.sent_bytes as u64);
                    if outcome.failed > 0 {
                        stream.record_drop(run.side, DropReason::SendFailed, outcome.failed as u64);
                    }
                }
            }
            start = end;
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
            match command {
                Command::Add { id, streams, reply } => {
                    let result = self.add_session(id, streams);
                    let _ = reply.send(result);
                }
                Command::Update {
                    id,
                    peers,
                    clock_rates,
                    reply,
                } => {
                    let now = Instant::now();
                    let found = match self.by_id.get(&id).and_then(|&k| self.sessions.get_mut(k)) {
                        Some(session) => {
                            for update in peers {
                                if let Some(stream) = session.streams.get_mut(update.stream) {
                                    stream.update_leg(now, update.side, update.rtp, update.rtcp);
                                }
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
                Command::Remove { id, reply } => {
                    let report = self.by_id.get(&id).copied().map(|key| {
                        let report = self.report(key, Instant::now());
                        self.remove_session(key);
                        report
                    });
                    let _ = reply.send(report);
                }
                Command::Inspect { id, reply } => {
                    let now = Instant::now();
                    let report = self.by_id.get(&id).map(|&key| self.report(key, now));
                    let _ = reply.send(report);
                }
                Command::Stats { reply } => {
                    let _ = reply.send(self.stats());
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
            leases: Vec::with_capacity(streams.len() * 2),
        };
        let mut registered = Vec::new();
        let result = (|| {
            for (stream_index, setup) in streams.into_iter().enumerate() {
                let [user, remote] = setup.legs;
                session.streams.push(Stream::new(
                    now,
                    setup.config,
                    user.config,
                    remote.config,
                    &setup.clock_rates,
                ));
                let mut tokens = [[0usize; 2]; 2];
                for (side, leg) in [(Side::User, user), (Side::Remote, remote)] {
                    let LegSockets { rtp, rtcp, lease } = leg.sockets;
                    session.leases.push(lease);
                    let rtp_token = self.register(
                        rtp,
                        key,
                        stream_index,
                        side,
                        Component::Rtp,
                        &mut registered,
                    )?;
                    let rtcp_token = match rtcp {
                        Some(rtcp) => self.register(
                            rtcp,
                            key,
                            stream_index,
                            side,
                            Component::Rtcp,
                            &mut registered,
                        )?,
                        None => rtp_token,
                    };
                    tokens[side as usize] = [rtp_token, rtcp_token];
                }
                session.tokens.push(tokens);
            }
            Ok(())
        })();
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

    fn register(
        &mut self,
        socket: std::net::UdpSocket,
        session: usize,
        stream: usize,
        side: Side,
        component: Component,
        registered: &mut Vec<usize>,
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
            side,
            component,
        });
        registered.push(token);
        Ok(token)
    }

    /// Closes a session's sockets, then returns its ports to the pool.
    fn remove_session(&mut self, key: usize) {
        let session = self.sessions.remove(key);
        self.by_id.remove(&session.id);
        for tokens in &session.tokens {
            for side in tokens {
                for (i, &token) in side.iter().enumerate() {
                    // With rtcp-mux the RTCP token repeats the RTP one.
                    if i == 1 && token == side[0] {
                        continue;
                    }
                    if let Some(mut entry) = self.sockets.try_remove(token) {
                        let _ = self.poll.registry().deregister(&mut entry.socket);
                    }
                }
            }
        }
        // The sockets are closed; now the leases may free the ports.
        drop(session);
    }

    fn report(&self, key: usize, now: Instant) -> SessionReport {
        let session = &self.sessions[key];
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
            idle: now.saturating_duration_since(last_media),
        }
    }

    fn tick(&mut self, now: Instant) {
        // Deliver session ends the control plane could not take before.
        while let Some(event) = self.undelivered.pop() {
            if let Err(
                mpsc::error::TrySendError::Full(event) | mpsc::error::TrySendError::Closed(event),
            ) = self.events.try_send(event)
            {
                self.undelivered.push(event);
                break;
            }
        }
        let mut expired = Vec::new();
        for (key, session) in &self.sessions {
            let last_media = session.streams.iter().filter_map(Stream::last_rtp_at).max();
            let reason = match last_media {
                Some(at) if now.saturating_duration_since(at) >= self.timeouts.media => {
                    Some(EndReason::MediaTimeout)
                }
                None if now.saturating_duration_since(session.created) >= self.timeouts.setup => {
                    Some(EndReason::SetupTimeout)
                }
                Some(_) | None => None,
            };
            if let Some(reason) = reason {
                expired.push((key, reason));
            }
        }
        for (key, reason) in expired {
            let report = self.report(key, now);
            let id = self.sessions[key].id;
            self.remove_session(key);
            debug!(worker = self.index, session = %id, reason = reason.name(), "session ended");
            let event = WorkerEvent::SessionEnded { id, reason, report };
            if let Err(
                mpsc::error::TrySendError::Full(event) | mpsc::error::TrySendError::Closed(event),
            ) = self.events.try_send(event)
            {
                warn!(
                    worker = self.index,
                    "control plane busy; session end queued"
                );
                self.undelivered.push(event);
            }
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
        }
    }

    fn shutdown(&mut self) {
        let keys: Vec<usize> = self.sessions.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.remove_session(key);
        }
    }
}
