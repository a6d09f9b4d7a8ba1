//! A media worker: one thread, one mio event loop, owning the sockets of the
//! sessions pinned to it. It is the I/O shell around the sans-IO
//! [`Session`]s: it maps each socket to its (session, stream, leg,
//! component), hands datagrams to the session and sends what the session
//! says to send, drives the sessions' time, and carries their events to the
//! control plane. It decides nothing about calls itself.
//!
//! Per datagram: a slab lookup by token, [`Session::handle_packet`] on the
//! receive buffer in place, a queued send; sends to the same socket leave in
//! one `sendmmsg`. No allocation, no lock and no channel on that path.
//! Commands from the control plane arrive on a bounded channel with a mio
//! `Waker`; events go back on a bounded channel with `try_send`, and the few
//! that must not be lost (a session's end, a transfer's outcome) wait in a
//! backlog bounded by the number of sessions.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
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

use crate::core::dtls::DtlsParams;
use crate::core::fastpath::{Direction, FastPath, FastProgress, Lane};
use crate::core::ids::{LegId, Party, SessionId, StreamIndex, TransferId, WorkerId};
use crate::core::session::{
    EndReason, Session, SessionEvent, SessionReport, SessionUpdate, Timeouts,
};
use crate::core::snapshot::SessionSnapshot;
use crate::core::stream::{Component, DropReason, Verdict};
use crate::io::dtls::{
    DtlsCommand, DtlsHandle, HandshakeDone, LegKey, MAX_DTLS_DATAGRAM, WorkerLink,
};
use crate::io::kernel::{Clocks, KernelMaps, RouteHandle};
use crate::io::ports::{LegSockets, PortLease};
use crate::io::sys::{BATCH, BUF_LEN, RecvBatch, SendBatch};
use crate::messages::{
    DataplaneError, KernelWorkerStats, LATENCY_BUCKETS_NS, Resume, StreamSetup, TransferSetup,
    WorkerEvent, WorkerStats,
};

/// The waker's token; socket tokens are slab keys, far below it.
pub(crate) const WAKER: Token = Token(usize::MAX);
/// How often the sessions' timeouts are checked.
const TICK: Duration = Duration::from_millis(20);

/// A session's timeouts are looked at no later than this after the last
/// look: activity moves its deadlines, and a first packet can bring one
/// forward (the setup timeout gives way to the media timeout). Each session
/// keeps its own phase, so the looks spread over the ticks instead of all
/// sessions being scanned at once (a burst that every packet arriving
/// during it would wait out).
const LOOK_AT_LEAST_EVERY: Duration = Duration::from_secs(1);
// A lane's datagrams of a batch are a bit each in a u32.
const _: () = assert!(BATCH <= 32);

/// `recvmmsg` calls on one socket per turn of the loop before the others get
/// their turn (fairness under load).
const BATCHES_PER_TURN: usize = 8;
/// Largest latency recorded, in nanoseconds (anything slower is clamped).
const LATENCY_MAX_NS: u64 = 10_000_000_000;
/// One forwarded batch in this many has its relay latency recorded.
const LATENCY_SAMPLING: u64 = 16;
/// No socket in this slot.
const NO_TOKEN: usize = usize::MAX;

/// A page of session snapshots, and the slot the next page starts at.
pub(crate) type SnapshotPage = (Vec<(SessionId, SessionSnapshot)>, Option<usize>);

/// A reply channel for one command.
pub(crate) type Reply<T> = oneshot::Sender<T>;

/// A control-plane request to a worker, sent by
/// [`Dataplane`](crate::Dataplane), which hides this queue.
#[derive(Debug)]
pub(crate) enum Command {
    /// Take over a session's sockets and start forwarding; a resumed
    /// session (high availability) goes on from its snapshot, with its
    /// update applied before its first packet.
    Add {
        id: SessionId,
        streams: Vec<StreamSetup>,
        resume: Option<Box<Resume>>,
        reply: Reply<Result<(), DataplaneError>>,
    },
    /// Apply a signalling update.
    Update {
        id: SessionId,
        update: SessionUpdate,
        reply: Reply<Result<(), DataplaneError>>,
    },
    /// Open the new device's legs.
    BeginTransfer {
        id: SessionId,
        setup: TransferSetup,
        reply: Reply<Result<(), DataplaneError>>,
    },
    /// Switch to the pending device now (commit mode).
    Commit {
        id: SessionId,
        transfer: TransferId,
        reply: Reply<Result<(), DataplaneError>>,
    },
    /// Roll back an open transfer (any, when `transfer` is `None`).
    Cancel {
        id: SessionId,
        transfer: Option<TransferId>,
        reply: Reply<Result<TransferId, DataplaneError>>,
    },
    /// End a session: close its sockets, free its ports, report.
    Remove {
        id: SessionId,
        reply: Reply<Result<SessionReport, DataplaneError>>,
    },
    /// Report on a session without changing it.
    Inspect {
        id: SessionId,
        reply: Reply<Result<SessionReport, DataplaneError>>,
    },
    /// Worker-wide counters.
    Stats { reply: Reply<WorkerStats> },
    /// Snapshots of the sessions that took in packets since their last
    /// one (every session when `all`), for storing: at most `limit`, from
    /// slot `from` on, with the slot to go on from (a page at a time, so
    /// the packets of a busy worker never wait for all of them).
    Snapshots {
        all: bool,
        from: usize,
        limit: usize,
        reply: Reply<SnapshotPage>,
    },
    /// The ids of the sessions on this worker.
    Sessions { reply: Reply<Vec<SessionId>> },
    /// New timeouts, for this worker's sessions and the ones it gets later.
    SetTimeouts {
        timeouts: Timeouts,
        reply: Reply<()>,
    },
    /// Fail as a bug would, by panicking, so that tests can check what the
    /// relay does then.
    Fail,
}

/// What one batch sent: (sent, failed), and per destination party the
/// datagrams and bytes.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    sent: u64,
    failed: u64,
    packets_to: [u64; 2],
    bytes_to: [u64; 2],
}

/// Total CPU time of the calling thread, from procfs.
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
    stream: StreamIndex,
    leg: LegId,
    component: Component,
    /// Other streams' legs ride this socket (BUNDLE): each datagram is
    /// routed to its stream first.
    bundled: bool,
    /// The user-space fast path of the stream direction whose packets
    /// arrive here, while it has one. Held in the socket's own entry, not
    /// apart: a packet's path then reads one entry whose address its token
    /// gives, so its cache misses overlap instead of following a chain
    /// (socket, then lane, then output socket).
    lane: Option<LaneEntry>,
}

/// A lane and where what it takes leaves.
struct LaneEntry {
    lane: Lane,
    /// The output leg's RTP socket, duplicated: the lane sends through it
    /// without looking that socket's entry up, and a duplicate can only
    /// ever be that socket (the lane ends before its leg closes anyway).
    out: OwnedFd,
    /// The input socket carries RTCP too (rtcp-mux): RTCP-looking
    /// datagrams there are RTCP, left for the session as the lane goes on.
    /// Without it the session reads them as RTP, so they stop the lane.
    mux: bool,
    /// The stream may accept another address than the peer (asymmetric,
    /// NAT relearning): any RTP from elsewhere stops the lane too.
    lax: bool,
    /// Whom its packets go to (for the worker's counters, kept at once).
    to: Party,
}

/// A session and the sockets of its legs.
struct Entry {
    session: Session,
    /// Socket tokens by stream, leg and component; with rtcp-mux the RTCP
    /// entry repeats the RTP token.
    tokens: Vec<[[usize; 2]; LegId::COUNT]>,
    /// Port leases by stream and leg, dropped after the leg's sockets close.
    leases: Vec<[Option<PortLease>; LegId::COUNT]>,
    /// Packets taken in when its last snapshot was taken (`None`: never).
    snapshot_at_packets: Option<u64>,
    /// Stream directions a fast path (the kernel's or a lane) forwards now.
    routes: Vec<LiveRoute>,
    /// When its timeouts are looked at next (its live entry in
    /// `Worker::deadlines`; others for it are stale).
    look_at: Option<Instant>,
}

/// A stream direction a fast path forwards, and what it was installed for.
struct LiveRoute {
    stream: StreamIndex,
    direction: Direction,
    path: FastPath,
    handle: RouteBacking,
}

/// Which fast path forwards a route.
enum RouteBacking {
    /// The kernel's.
    Kernel(RouteHandle),
    /// A lane on the input socket with this token.
    Lane(usize),
}

/// Fast path routes a session may have (a bit each in a mask).
const MAX_ROUTES: usize = 64;

/// How often each session's routes are read back (activity for its
/// timeouts, counters for reports) and checked.
const ROUTE_VISIT: Duration = Duration::from_secs(1);

/// A queued send: the socket token, destination and which datagram (in the
/// receive batch, or in the fork buffers).
#[derive(Clone, Copy)]
struct Outgoing {
    token: usize,
    session: usize,
    stream: StreamIndex,
    leg: LegId,
    to: SocketAddr,
    index: usize,
    /// Its length (a fork's; a received datagram's is in the batch).
    len: usize,
}

pub(crate) struct Worker {
    index: WorkerId,
    /// Never sleep in epoll (see `DataplaneConfig::busy_poll`).
    busy_poll: bool,
    poll: Poll,
    commands: Receiver<Command>,
    stop: Arc<AtomicBool>,
    events: mpsc::Sender<WorkerEvent>,
    timeouts: Timeouts,
    sockets: Slab<SocketEntry>,
    sessions: Slab<Entry>,
    by_id: HashMap<SessionId, usize>,
    /// Events the control plane must get (they free ports or change who the
    /// user's device is) but whose queue was full.
    undelivered: Vec<WorkerEvent>,
    /// Copies of the remote's media for a pending device.
    forks: Box<[[u8; BUF_LEN]; BATCH]>,
    /// A batch's sends and its forks' (at most BATCH each, so pushing never
    /// allocates).
    queued: Vec<Outgoing>,
    forked: Vec<Outgoing>,
    forwarded: u64,
    dropped: u64,
    packets_to: [u64; 2],
    bytes_to: [u64; 2],
    drops: [u64; DropReason::COUNT],
    events_lost: u64,
    latency: Histogram<u64>,
    /// Forwarded batches, for latency sampling.
    batches: u64,
    /// The DTLS thread, for WebRTC legs.
    dtls: Option<DtlsHandle>,
    /// How the DTLS thread sends keys back here.
    link: WorkerLink,
    /// Keys from completed handshakes.
    handshakes: Receiver<HandshakeDone>,
    /// The kernel fast path's maps, when it is on.
    kernel: Option<KernelMaps>,
    /// The kernel fast path's counters for this worker.
    kernel_stats: KernelWorkerStats,
    /// Steady directions the kernel does not take are forwarded by lanes
    /// (see [`Lane`]).
    lanes_on: bool,
    /// Lanes open (each lives in its input socket's entry).
    lanes: usize,
    /// Datagrams lanes forwarded.
    lane_packets: u64,
    /// Where the next tick's visit of sessions for routes starts.
    route_cursor: usize,
    /// When to look at which session's timeouts, soonest first.
    deadlines: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl Worker {
    pub(crate) fn new(
        index: WorkerId,
        poll: Poll,
        commands: Receiver<Command>,
        events: mpsc::Sender<WorkerEvent>,
        timeouts: Timeouts,
        stop: Arc<AtomicBool>,
        (waker, dtls): (Arc<mio::Waker>, Option<DtlsHandle>),
    ) -> io::Result<Self> {
        // Bounded by the handshakes in flight; one message per handshake.
        let (keys, handshakes) = crossbeam_channel::bounded(4096);
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
            queued: Vec::with_capacity(BATCH),
            forked: Vec::with_capacity(BATCH),
            forwarded: 0,
            dropped: 0,
            packets_to: [0; 2],
            bytes_to: [0; 2],
            drops: [0; DropReason::COUNT],
            events_lost: 0,
            latency,
            batches: 0,
            dtls,
            link: WorkerLink { keys, waker },
            handshakes,
            kernel: None,
            kernel_stats: KernelWorkerStats::default(),
            lanes_on: false,
            lanes: 0,
            lane_packets: 0,
            route_cursor: 0,
            deadlines: BinaryHeap::with_capacity(256),
        })
    }

    /// Forwards established plain legs through the kernel fast path.
    pub(crate) fn kernel(mut self, maps: Option<KernelMaps>) -> Self {
        self.kernel = maps;
        self
    }

    /// Forwards established plain legs the kernel does not take through
    /// lanes.
    pub(crate) fn lanes(mut self, enabled: bool) -> Self {
        self.lanes_on = enabled;
        self
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
                error!(worker = %self.index, "poll failed, worker stopping: {e}");
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
                    self.install_handshake_keys();
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
                    debug!(worker = %self.index, "recvmmsg: {e}");
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

    /// Forwards the datagrams of a batch that the socket's lane takes;
    /// returns which (a bit each; 0 without a lane). RTCP and strangers'
    /// datagrams are left for the session and the lane goes on after them
    /// (they change nothing it carries); its own source's first packet it
    /// will not take stops it, and that one and all after it are left for
    /// the session, which takes the lane back first.
    fn lane_batch(
        &mut self,
        received_at: Instant,
        token: usize,
        recv: &mut RecvBatch,
        received: usize,
        send: &mut SendBatch,
    ) -> u32 {
        let Some(entry) = self
            .sockets
            .get_mut(token)
            .and_then(|socket| socket.lane.as_mut())
        else {
            return 0;
        };
        let mut taken = 0u32;
        for index in 0..received {
            let (source, truncated, buf, len) = recv.datagram(index);
            let Some(source) = source.filter(|_| !truncated) else {
                break;
            };
            if entry.lane.forward(received_at, source, buf, len) {
                taken |= 1 << index;
            } else if (entry.lax || entry.lane.is_source(source))
                && !(entry.mux && crate::core::rtp::is_rtcp(&buf[..len]))
            {
                break;
            }
        }
        if taken == 0 {
            return 0;
        }
        let (to, party) = (entry.lane.destination(), entry.to);
        let forwarded = (0..received).filter(|index| taken & (1 << index) != 0);
        let outcome = send.send(
            entry.out.as_fd(),
            forwarded.clone().map(|index| (to, recv.bytes(index))),
        );
        self.lane_packets += outcome.sent as u64;
        self.forwarded += outcome.sent as u64;
        self.packets_to[party.index()] += outcome.sent as u64;
        self.bytes_to[party.index()] += outcome.sent_bytes as u64;
        if outcome.failed > 0 {
            // Counted as forwarded by the lane: take them back out.
            let bytes: usize = forwarded.map(|index| recv.bytes(index).len()).sum();
            entry
                .lane
                .unsent(outcome.failed as u64, (bytes - outcome.sent_bytes) as u64);
            self.dropped += outcome.failed as u64;
            self.drops[DropReason::SendFailed as usize] += outcome.failed as u64;
        }
        self.sample_latency(received_at, u64::from(taken.count_ones()));
        taken
    }

    /// Latency takes a second clock read, so it is sampled: one forwarded
    /// batch in LATENCY_SAMPLING, weighted by its `packets`.
    fn sample_latency(&mut self, received_at: Instant, packets: u64) {
        self.batches = self.batches.wrapping_add(1);
        if self.batches.is_multiple_of(LATENCY_SAMPLING) {
            let elapsed = u64::try_from(received_at.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let _ = self
                .latency
                .record_n(elapsed.clamp(1, LATENCY_MAX_NS), packets);
        }
    }

    fn process_batch(
        &mut self,
        received_at: Instant,
        token: usize,
        recv: &mut RecvBatch,
        received: usize,
        send: &mut SendBatch,
    ) {
        // The socket's lane takes the source's next packets without the
        // session; what it leaves (see lane_batch) goes to the session,
        // which takes the lane back first where it must (hand_back_routes).
        let taken = self.lane_batch(received_at, token, recv, received, send);
        let left = |index: usize| taken & (1 << index) == 0;
        if !(0..received).any(left) {
            return;
        }
        let Some(socket) = self.sockets.get(token) else {
            return;
        };
        let (key, owner, owner_leg, component, bundled) = (
            socket.session,
            socket.stream,
            socket.leg,
            socket.component,
            socket.bundled,
        );
        let checked_routes = self
            .sessions
            .get(key)
            .is_some_and(|entry| !entry.routes.is_empty())
            && self.hand_back_routes(key, (owner, owner_leg, component), recv, received, taken);
        let Some(entry) = self.sessions.get_mut(key) else {
            return;
        };
        // Kept by the worker and emptied per batch: a batch of one costs
        // one entry, not an initialised array of BATCH.
        let mut queued = std::mem::take(&mut self.queued);
        let mut forked = std::mem::take(&mut self.forked);
        queued.clear();
        forked.clear();
        for index in (0..received).filter(|&index| left(index)) {
            let (source, truncated, buf, len) = recv.datagram(index);
            let Some(source) = source else { continue };
            let (stream, leg, learn) = if bundled {
                let routed = entry.session.route_bundle(owner, owner_leg, buf, len);
                (routed.stream, routed.leg, routed.learn)
            } else {
                (owner, owner_leg, None)
            };
            let verdict = if truncated {
                entry
                    .session
                    .record_drop(stream, leg, DropReason::TooLarge, 1);
                Verdict::Drop(DropReason::TooLarge)
            } else {
                entry.session.handle_packet(
                    received_at,
                    stream,
                    leg,
                    component,
                    source,
                    buf,
                    len,
                    &mut self.forks[forked.len()][..],
                )
            };
            match verdict {
                Verdict::Forward {
                    leg: out_leg,
                    component: out_component,
                    to,
                    len: new_len,
                    fork,
                } => {
                    if let Some(ssrc) = learn {
                        entry
                            .session
                            .learn_bundle_ssrc((owner, owner_leg), ssrc, stream);
                    }
                    recv.set_len(index, new_len);
                    if let Some(reason) = entry.session.take_hidden_drop() {
                        // The packet was held; its buffer carries a request.
                        self.dropped += 1;
                        self.drops[reason as usize] += 1;
                    }
                    queued.push(Outgoing {
                        token: entry.tokens[stream.0][out_leg.index()][out_component.index()],
                        session: key,
                        stream,
                        leg: out_leg,
                        to,
                        index,
                        len: new_len,
                    });
                    if let Some(fork) = fork {
                        // The session wrote the copy into this fork buffer.
                        forked.push(Outgoing {
                            token: entry.tokens[stream.0][fork.leg.index()][fork.socket.index()],
                            session: key,
                            stream,
                            leg: fork.leg,
                            to: fork.to,
                            index: forked.len(),
                            len: fork.len,
                        });
                    }
                }
                Verdict::Drop(reason) => {
                    self.dropped += 1;
                    self.drops[reason as usize] += 1;
                }
                Verdict::Handshake { leg: on } => {
                    // Off the media path: a copy to the DTLS thread (a few
                    // records per call, so the allocation is not per
                    // packet of media).
                    let handed = match (&self.dtls, len <= MAX_DTLS_DATAGRAM) {
                        (Some(dtls), true) => dtls.send(DtlsCommand::Datagram {
                            key: LegKey {
                                session: entry.session.id(),
                                stream,
                                leg: on,
                            },
                            from: source,
                            bytes: buf[..len].to_vec(),
                        }),
                        (Some(_) | None, _) => false,
                    };
                    if !handed {
                        entry
                            .session
                            .record_drop(stream, on, DropReason::HandshakeBusy, 1);
                        self.dropped += 1;
                        self.drops[DropReason::HandshakeBusy as usize] += 1;
                    }
                }
            }
        }
        let mut totals = Totals::default();
        send_runs(
            &self.sockets,
            &mut self.sessions,
            &queued,
            |q| recv.bytes(q.index),
            send,
            &mut totals,
        );
        let forks = &self.forks;
        send_runs(
            &self.sockets,
            &mut self.sessions,
            &forked,
            |q| &forks[q.index][..q.len],
            send,
            &mut totals,
        );
        self.forwarded += totals.sent;
        self.dropped += totals.failed;
        self.drops[DropReason::SendFailed as usize] += totals.failed;
        for party in Party::BOTH {
            self.packets_to[party.index()] += totals.packets_to[party.index()];
            self.bytes_to[party.index()] += totals.bytes_to[party.index()];
        }
        let total = queued.len() + forked.len();
        self.queued = queued;
        self.forked = forked;
        if total > 0 {
            self.sample_latency(received_at, total as u64);
        }
        if self
            .sessions
            .get(key)
            .is_some_and(|entry| !entry.routes.is_empty())
            && checked_routes
        {
            self.check_routes(key, received_at);
        }
        self.collect_events(key, received_at);
    }

    /// Before the worker decides anything about a batch of a session the
    /// kernel forwards for: RTP from a route's own source came up because
    /// the kernel would not take it (reordered, a jump, an event, another
    /// SSRC), so that route ends; the others are read, so what the batch
    /// meets (RTCP to translate) includes what the kernel sent. False
    /// when nothing in the batch came from the session's peers.
    fn hand_back_routes(
        &mut self,
        key: usize,
        (stream, leg, component): (StreamIndex, LegId, Component),
        recv: &mut RecvBatch,
        received: usize,
        taken: u32,
    ) -> bool {
        let Some(entry) = self.sessions.get(key) else {
            return false;
        };
        // What the session will read as RTCP: RTCP-looking datagrams on an
        // RTP socket without rtcp-mux are RTP to it.
        let muxed = component == Component::Rtcp || rtcp_muxed(&entry.tokens, stream, leg);
        // Where another address may be accepted, RTP from anywhere on the
        // leg can move what its routes carry.
        let lax = entry.session.lax_sources(stream);
        let mut ending = 0u64;
        let mut from_peers = false;
        // A lane's datagrams are not the session's to look at.
        for index in (0..received).filter(|index| taken & (1 << index) == 0) {
            let (source, _, buf, len) = recv.datagram(index);
            let Some(source) = source else { continue };
            let rtcp = muxed && crate::core::rtp::is_rtcp(&buf[..len.min(buf.len())]);
            // RTCP is translated against the routes' counts and positions,
            // and the leg's RTCP peer may have an address of its own
            // (a=rtcp with another IP). Only the peer's: a stranger's
            // RTCP-looking bytes cost no reads.
            from_peers |= rtcp && entry.session.rtcp_peer(stream, leg) == Some(source);
            for (i, route) in entry.routes.iter().enumerate() {
                // By address, not port: the peers' RTCP ports are theirs.
                let own_leg = route.stream == stream && route.path.from == leg;
                if route.path.source.ip() == source.ip()
                    || route.path.destination.ip() == source.ip()
                    || (lax && own_leg)
                {
                    from_peers = true;
                }
                if !rtcp && own_leg && (route.path.source == source || lax) {
                    ending |= 1 << i;
                }
            }
        }
        // Strangers' RTP changes nothing the routes carry: it costs no map
        // reads.
        if !from_peers {
            return false;
        }
        self.take_in_routes(key, |i, _| ending & (1 << i) != 0, true);
        true
    }

    /// Ends the session's routes that `which` picks, taking in what they
    /// forwarded.
    fn end_routes(&mut self, key: usize, which: impl Fn(usize, &LiveRoute) -> bool) {
        self.take_in_routes(key, which, false);
    }

    /// Takes in what the session's routes forwarded since the last read.
    fn read_routes(&mut self, key: usize) {
        self.take_in_routes(key, |_, _| false, true);
    }

    /// One pass over the session's routes: those `end` picks are ended,
    /// the others read when `read_rest`; what each forwarded is taken in.
    /// Allocates nothing (lanes are read on their packets' path).
    fn take_in_routes(
        &mut self,
        key: usize,
        end: impl Fn(usize, &LiveRoute) -> bool,
        read_rest: bool,
    ) {
        let Some(Entry {
            session, routes, ..
        }) = self.sessions.get_mut(key)
        else {
            return;
        };
        if routes.is_empty() {
            return;
        }
        let clocks = self.kernel.as_ref().map(|_| Clocks::read());
        let (mut at, mut index) = (0, 0);
        while at < routes.len() {
            let ending = end(index, &routes[at]);
            index += 1;
            if !ending && !read_rest {
                at += 1;
                continue;
            }
            let route = &mut routes[at];
            let taken = match &mut route.handle {
                RouteBacking::Lane(token) => {
                    // Only the lane of this route's own socket (a slot
                    // reused by another leg has none of it).
                    let socket = self.sockets.get_mut(*token).filter(|socket| {
                        (socket.session, socket.stream, socket.leg)
                            == (key, route.stream, route.path.from)
                    });
                    Ok(socket.and_then(|socket| {
                        if ending {
                            let mut entry = socket.lane.take()?;
                            self.lanes -= 1;
                            Some(entry.lane.take())
                        } else {
                            socket.lane.as_mut().map(|entry| entry.lane.take())
                        }
                    }))
                }
                RouteBacking::Kernel(handle) => match (self.kernel.as_mut(), &clocks) {
                    (Some(kernel), Some(clocks)) if ending => kernel
                        .remove(handle, clocks)
                        .inspect(|_| self.kernel_stats.removed += 1)
                        .map(Some),
                    (Some(kernel), Some(clocks)) => kernel.read(handle, clocks).map(Some),
                    _ => Ok(None),
                },
            };
            match taken {
                Ok(Some(progress)) => absorb(
                    session,
                    (route.stream, route.direction, &route.path),
                    &progress,
                    &mut self.kernel_stats,
                    &mut self.forwarded,
                    &mut self.packets_to,
                    &mut self.bytes_to,
                ),
                Ok(None) => {}
                Err(e) => {
                    self.kernel_stats.errors += 1;
                    debug!(worker = %self.index, ending, "taking in a kernel route: {e}");
                }
            }
            if ending {
                routes.remove(at);
            } else {
                at += 1;
            }
        }
    }

    /// Takes in what the session's routes forwarded, then ends those that
    /// no longer match what the session would do: the check judges on the
    /// session's state, which the read brings up to date.
    fn refresh_routes(&mut self, key: usize, now: Instant) {
        self.read_routes(key);
        self.check_routes(key, now);
    }

    /// Ends the routes that no longer match what the session would do.
    fn check_routes(&mut self, key: usize, now: Instant) {
        let Some(entry) = self.sessions.get(key) else {
            return;
        };
        // A bit per route (at most MAX_ROUTES): no list per look, and one
        // pass over what the session would forward now.
        let mut current = 0u64;
        for (stream, direction, path, _) in entry.session.fast_paths(now) {
            if let Some(i) = entry.routes.iter().position(|route| {
                route.stream == stream && route.direction == direction && route.path == path
            }) {
                current |= 1 << i;
            }
        }
        let all = if entry.routes.len() >= 64 {
            u64::MAX
        } else {
            (1u64 << entry.routes.len()) - 1
        };
        let stale = all & !current;
        if stale != 0 {
            self.end_routes(key, |i, _| stale & (1 << i) != 0);
        }
    }

    /// Reads and checks the session's routes, then installs the stream
    /// directions that qualify and have none: in the kernel where it
    /// serves both legs' addresses, else (with lanes on) on a lane.
    fn visit_routes(&mut self, key: usize, now: Instant, clocks: Option<&Clocks>) {
        self.refresh_routes(key, now);
        if let (Some(kernel), Some(entry)) = (self.kernel.as_mut(), self.sessions.get(key)) {
            let mut moved = 0u64;
            for (i, route) in entry.routes.iter().enumerate() {
                if let RouteBacking::Kernel(handle) = &route.handle
                    && kernel.moved(handle, now)
                {
                    moved |= 1 << i;
                }
            }
            if moved != 0 {
                self.end_routes(key, |i, _| moved & (1 << i) != 0);
            }
        }
        let Some(Entry {
            session,
            routes,
            tokens,
            ..
        }) = self.sessions.get_mut(key)
        else {
            return;
        };
        for (stream, direction, path, start) in session.fast_paths(now) {
            if routes.len() >= MAX_ROUTES {
                return;
            }
            if routes
                .iter()
                .any(|r| r.stream == stream && r.direction == direction)
            {
                continue;
            }
            let token = |leg: LegId| {
                tokens
                    .get(stream.0)
                    .map(|tokens| tokens[leg.index()][Component::Rtp.index()])
            };
            let (Some(in_token), Some(out_token)) = (token(path.from), token(path.to)) else {
                continue;
            };
            let handle = match (self.kernel.as_mut(), clocks) {
                (Some(kernel), Some(clocks)) => {
                    let local = |token: usize| self.sockets.get(token)?.socket.local_addr().ok();
                    let (Some(local_in), Some(local_out)) = (local(in_token), local(out_token))
                    else {
                        continue;
                    };
                    if kernel.serves(local_in.ip()) && kernel.serves(local_out.ip()) {
                        match kernel.install(&path, &start, local_in, local_out, clocks) {
                            Ok(handle) => {
                                self.kernel_stats.installed += 1;
                                Some(RouteBacking::Kernel(handle))
                            }
                            Err(e) => {
                                self.kernel_stats.errors += 1;
                                debug!(worker = %self.index, "installing a kernel route: {e}");
                                return;
                            }
                        }
                    } else {
                        None
                    }
                }
                _ => None,
            };
            let handle = match handle {
                Some(handle) => handle,
                None if self.lanes_on => {
                    // A bundled socket carries other streams too: its
                    // datagrams are routed by the session.
                    if self
                        .sockets
                        .get(in_token)
                        .is_none_or(|socket| socket.bundled || socket.lane.is_some())
                    {
                        continue;
                    }
                    let Some(lane) = Lane::new(&path, &start, now) else {
                        continue;
                    };
                    // Only through the output leg's own socket, which
                    // `close_leg` of that leg ends the lane before closing.
                    let Some(out_socket) = self.sockets.get(out_token).filter(|socket| {
                        (socket.session, socket.stream, socket.leg) == (key, stream, path.to)
                    }) else {
                        continue;
                    };
                    // Without a free descriptor the direction stays with
                    // the session, as before lanes.
                    let out = match out_socket.socket.as_fd().try_clone_to_owned() {
                        Ok(out) => out,
                        Err(e) => {
                            debug!(worker = %self.index, "opening a lane: {e}");
                            continue;
                        }
                    };
                    let Some(socket) = self.sockets.get_mut(in_token) else {
                        continue;
                    };
                    socket.lane = Some(LaneEntry {
                        lane,
                        out,
                        mux: rtcp_muxed(tokens, stream, path.from),
                        lax: session.lax_sources(stream),
                        to: direction.toward(),
                    });
                    self.lanes += 1;
                    RouteBacking::Lane(in_token)
                }
                None => continue,
            };
            routes.push(LiveRoute {
                stream,
                direction,
                path,
                handle,
            });
        }
    }

    /// A share of the sessions each tick, so that every session is
    /// visited about once per [`ROUTE_VISIT`].
    fn route_tick(&mut self, now: Instant) {
        if (self.kernel.is_none() && !self.lanes_on) || self.sessions.is_empty() {
            return;
        }
        // A share of the slab's slots per tick (not a walk of all of it):
        // every slot comes round once per ROUTE_VISIT.
        let ticks = (ROUTE_VISIT.as_millis() / TICK.as_millis()).max(1) as usize;
        let slots = self.sessions.capacity().max(1);
        let share = slots.div_ceil(ticks);
        let clocks = self.kernel.as_ref().map(|_| Clocks::read());
        for _ in 0..share {
            let key = self.route_cursor % slots;
            self.route_cursor = (key + 1) % slots;
            // A session whose every direction is on a lane has nothing to
            // install, and its lanes are read when something needs them
            // (a get, a timeout, a batch the session handles): no visit,
            // so steady calls cost the tick nothing.
            let settled = self.sessions.get(key).is_none_or(|entry| {
                entry.routes.len() >= 2 * entry.tokens.len()
                    && entry
                        .routes
                        .iter()
                        .all(|route| matches!(route.handle, RouteBacking::Lane(_)))
            });
            if !settled {
                self.visit_routes(key, now, clocks.as_ref());
            }
        }
    }

    /// Carries a session's events out: legs to close, reports to the control
    /// plane, its end.
    fn collect_events(&mut self, key: usize, now: Instant) {
        let mut any = false;
        loop {
            let Some(entry) = self.sessions.get_mut(key) else {
                return;
            };
            let Some(event) = entry.session.poll_event() else {
                if any {
                    // A switch, a rollback: deadlines may have come forward.
                    self.schedule(key, now);
                }
                return;
            };
            any = true;
            let id = entry.session.id();
            match event {
                SessionEvent::LegClosed { stream, leg } => self.close_leg(key, stream, leg),
                SessionEvent::SourceLatched { stream, latched } => {
                    // A peer learned again (NAT rebinding) moves where the
                    // stream's routes send or what they take from.
                    self.refresh_routes(key, now);
                    self.inform(WorkerEvent::SourceLatched {
                        id,
                        stream,
                        latched,
                    });
                }
                SessionEvent::IceSelected { stream, leg, addr } => {
                    if let Some(dtls) = &self.dtls {
                        let key = LegKey {
                            session: id,
                            stream,
                            leg,
                        };
                        // A full queue: the peer's own ClientHello (or the
                        // next nomination) starts it instead.
                        let _ = dtls.send(DtlsCommand::Peer { key, addr });
                    }
                }
                SessionEvent::ConsentExpired { stream, leg, party } => {
                    debug!(worker = %self.index, session = %id, %stream, %leg, "ICE consent expired");
                    self.deliver(WorkerEvent::ConsentExpired {
                        id,
                        stream,
                        leg,
                        party,
                    });
                }
                SessionEvent::TransferCompleted { transfer, gap } => {
                    debug!(worker = %self.index, session = %id, %transfer, "transfer completed");
                    self.deliver(WorkerEvent::TransferCompleted { id, transfer, gap });
                }
                SessionEvent::TransferTimedOut { transfer } => {
                    debug!(worker = %self.index, session = %id, %transfer, "transfer timed out; rolled back");
                    self.deliver(WorkerEvent::TransferTimedOut { id, transfer });
                }
                SessionEvent::Ended { reason } => {
                    self.end(key, now, reason);
                    return;
                }
            }
        }
    }

    fn end(&mut self, key: usize, now: Instant, reason: EndReason) {
        // The report counts what the kernel forwarded to the end.
        self.end_routes(key, |_, _| true);
        let Some(entry) = self.sessions.get(key) else {
            return;
        };
        let id = entry.session.id();
        let report = entry.session.report(now);
        self.remove_session(key);
        debug!(worker = %self.index, session = %id, reason = reason.name(), "session ended");
        self.deliver(WorkerEvent::SessionEnded { id, reason, report });
    }

    /// An informational event: dropped (and counted) if the control plane's
    /// queue is full.
    fn inform(&mut self, event: WorkerEvent) {
        if self.events.try_send(event).is_err() {
            self.events_lost += 1;
        }
    }

    /// Queues an event the control plane must not miss; if its queue is
    /// full, keeps it for the next tick (bounded: one per session end or
    /// transfer outcome).
    fn deliver(&mut self, event: WorkerEvent) {
        deliver(&self.events, &mut self.undelivered, event);
    }

    /// Starts (or restarts) a DTLS handshake on an installed leg whose
    /// settings the signalling just gave or changed.
    fn open_handshake(
        &mut self,
        id: SessionId,
        stream: StreamIndex,
        leg: LegId,
        params: DtlsParams,
    ) {
        let (Some(thread), Some(&key)) = (&self.dtls, self.by_id.get(&id)) else {
            return;
        };
        let token = self.sessions[key]
            .tokens
            .get(stream.0)
            .map_or(NO_TOKEN, |t| t[leg.index()][Component::Rtp.index()]);
        let Some(entry) = self.sockets.get(token) else {
            return;
        };
        let socket = match entry.socket.as_fd().try_clone_to_owned() {
            Ok(fd) => std::net::UdpSocket::from(fd),
            Err(e) => {
                warn!(worker = %self.index, session = %id, "cannot start a DTLS handshake: {e}");
                return;
            }
        };
        let key = LegKey {
            session: id,
            stream,
            leg,
        };
        if !self.hand_to_dtls(thread, key, socket, params) {
            warn!(worker = %self.index, session = %id, "the DTLS thread has stopped; handshake not started");
        }
    }

    /// Gives the DTLS thread a leg to run its handshake on; false if the
    /// thread has stopped.
    fn hand_to_dtls(
        &self,
        thread: &DtlsHandle,
        key: LegKey,
        socket: std::net::UdpSocket,
        params: DtlsParams,
    ) -> bool {
        thread.send(DtlsCommand::Open {
            key,
            socket,
            params,
            worker: self.link.clone(),
        })
    }

    /// Puts the keys of completed DTLS handshakes into their legs.
    fn install_handshake_keys(&mut self) {
        while let Ok(HandshakeDone { key, keys, params }) = self.handshakes.try_recv() {
            let installed = self.by_id.get(&key.session).is_some_and(|&slot| {
                self.sessions[slot]
                    .session
                    .set_leg_keys(key.stream, key.leg, keys, &params)
            });
            if !installed {
                debug!(worker = %self.index, session = %key.session, "keys of an overtaken DTLS handshake dropped");
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
                Command::Add {
                    id,
                    streams,
                    resume,
                    reply,
                } => {
                    let result = self.add_session(now, id, streams, resume.as_deref());
                    let added = result.is_ok();
                    if reply.send(result).is_err() && added {
                        // The control plane gave up waiting and will not
                        // know this session: it must not stay.
                        warn!(worker = %self.index, session = %id, "session added after its create gave up; removed again");
                        if let Some(&key) = self.by_id.get(&id) {
                            self.remove_session(key);
                        }
                    }
                }
                Command::Update { id, update, reply } => {
                    self.end_all_routes(id);
                    let result =
                        self.with_session(id, |entry| Ok(entry.session.update(now, &update)));
                    let result = result.map(|handshakes| {
                        for (stream, leg, params) in handshakes {
                            match params {
                                Some(params) => self.open_handshake(id, stream, leg, params),
                                None => {
                                    if let Some(dtls) = &self.dtls {
                                        let key = LegKey {
                                            session: id,
                                            stream,
                                            leg,
                                        };
                                        let _ = dtls.send(DtlsCommand::Close { key });
                                    }
                                }
                            }
                        }
                    });
                    let _ = reply.send(result);
                }
                Command::BeginTransfer { id, setup, reply } => {
                    self.end_all_routes(id);
                    let transfer = setup.transfer;
                    let result = self.begin_transfer(now, id, setup);
                    if let Some(&key) = self.by_id.get(&id) {
                        self.schedule(key, now);
                    }
                    let opened = result.is_ok();
                    if reply.send(result).is_err() && opened {
                        // Nobody will ever name this transfer: roll it back.
                        let _ = self.with_session(id, |entry| {
                            entry
                                .session
                                .cancel(Some(transfer))
                                .map_err(DataplaneError::Transfer)
                        });
                    }
                }
                Command::Commit {
                    id,
                    transfer,
                    reply,
                } => {
                    self.end_all_routes(id);
                    let result = self.with_session(id, |entry| {
                        entry
                            .session
                            .commit(now, transfer)
                            .map_err(DataplaneError::Transfer)
                    });
                    let _ = reply.send(result);
                }
                Command::Cancel {
                    id,
                    transfer,
                    reply,
                } => {
                    self.end_all_routes(id);
                    let result = self.with_session(id, |entry| {
                        entry
                            .session
                            .cancel(transfer)
                            .map_err(DataplaneError::Transfer)
                    });
                    let _ = reply.send(result);
                }
                Command::Remove { id, reply } => {
                    self.end_all_routes(id);
                    let result = match self.by_id.get(&id).copied() {
                        Some(key) => {
                            let report = self.sessions[key].session.report(now);
                            self.remove_session(key);
                            Ok(report)
                        }
                        None => Err(DataplaneError::NoSession(id)),
                    };
                    if let Err(Ok(report)) = reply.send(result) {
                        // Removed after the delete gave up waiting: say so,
                        // so the record does not outlive the session.
                        self.deliver(WorkerEvent::SessionRemoved { id, report });
                    }
                }
                Command::Inspect { id, reply } => {
                    if let Some(&key) = self.by_id.get(&id) {
                        self.read_routes(key);
                    }
                    let result = match self.by_id.get(&id) {
                        Some(&key) => Ok(self.sessions[key].session.report(now)),
                        None => Err(DataplaneError::NoSession(id)),
                    };
                    let _ = reply.send(result);
                }
                Command::Stats { reply } => {
                    let _ = reply.send(self.stats());
                }
                Command::Snapshots {
                    all,
                    from,
                    limit,
                    reply,
                } => {
                    let _ = reply.send(self.snapshots(now, all, from, limit));
                }
                Command::Sessions { reply } => {
                    let _ = reply.send(self.by_id.keys().copied().collect());
                }
                Command::SetTimeouts { timeouts, reply } => {
                    self.timeouts = timeouts;
                    let keys: Vec<usize> = self.sessions.iter().map(|(key, _)| key).collect();
                    for key in keys {
                        self.sessions[key].session.set_timeouts(timeouts);
                        self.schedule(key, now);
                    }
                    let _ = reply.send(());
                }
                Command::Fail => {
                    panic!("media worker {} told to fail (a test)", self.index)
                }
            }
        }
    }

    /// Ends every route of session `id` before a command changes it: the
    /// command then meets the state the kernel left.
    fn end_all_routes(&mut self, id: SessionId) {
        if let Some(&key) = self.by_id.get(&id) {
            self.end_routes(key, |_, _| true);
        }
    }

    /// Runs `change` on session `id`, then carries out its events.
    fn with_session<T>(
        &mut self,
        id: SessionId,
        change: impl FnOnce(&mut Entry) -> Result<T, DataplaneError>,
    ) -> Result<T, DataplaneError> {
        let key = *self.by_id.get(&id).ok_or(DataplaneError::NoSession(id))?;
        let result = change(&mut self.sessions[key]);
        let now = Instant::now();
        self.collect_events(key, now);
        self.schedule(key, now);
        result
    }

    fn add_session(
        &mut self,
        now: Instant,
        id: SessionId,
        streams: Vec<StreamSetup>,
        resume: Option<&Resume>,
    ) -> Result<(), DataplaneError> {
        if self.by_id.contains_key(&id) {
            return Err(DataplaneError::Exists(id));
        }
        let params: Vec<_> = streams.iter().map(|s| s.params.clone()).collect();
        let key = self.sessions.vacant_key();
        let mut entry = Entry {
            session: Session::new(now, id, &params, self.timeouts),
            tokens: vec![[[NO_TOKEN; 2]; LegId::COUNT]; streams.len()],
            leases: (0..streams.len())
                .map(|_| [None, None, None, None])
                .collect(),
            snapshot_at_packets: None,
            // Room for both directions of every stream: opening a fast
            // path later allocates nothing.
            routes: Vec::with_capacity((2 * streams.len()).min(MAX_ROUTES)),
            look_at: None,
        };
        let mut registered = Vec::new();
        let mut result = Ok(());
        // Each party's legs form their own bundles.
        for (side, leg) in [(0, LegId::FIRST_DEVICE), (1, LegId::REMOTE)] {
            let tags: Vec<_> = streams
                .iter()
                .enumerate()
                .map(|(index, setup)| (StreamIndex(index), leg, setup.bundle[side]))
                .collect();
            if let Err(e) = entry.session.set_bundles(&tags) {
                return Err(DataplaneError::Sockets(e.to_string()));
            }
        }
        for (index, setup) in streams.into_iter().enumerate() {
            let [device, remote] = setup.sockets;
            let dtls = [setup.params.device.dtls, setup.params.remote.dtls];
            for (leg, sockets, dtls) in [
                (LegId::FIRST_DEVICE, device, dtls[0]),
                (LegId::REMOTE, remote, dtls[1]),
            ] {
                if let Err(e) = self.install_leg(
                    &mut entry,
                    key,
                    StreamIndex(index),
                    leg,
                    sockets,
                    dtls,
                    &mut registered,
                ) {
                    result = Err(DataplaneError::Sockets(e.to_string()));
                }
            }
        }
        if let Err(e) = result {
            for token in registered {
                let mut socket = self.sockets.remove(token);
                let _ = self.poll.registry().deregister(&mut socket.socket);
            }
            if let Some(dtls) = &self.dtls {
                let _ = dtls.send(DtlsCommand::CloseSession { session: id });
            }
            return Err(e);
        }
        // A resumed session: before the sockets are polled, so the first
        // packet already goes out in the stored numbering.
        let mut handshakes = Vec::new();
        if let Some(resume) = resume {
            handshakes = entry.session.update(now, &resume.update);
            for &(stream, payloads) in &resume.device_payloads {
                entry.session.set_device_payloads(stream, payloads);
            }
            entry.session.resume(&resume.snapshot, now, resume.since);
            entry.snapshot_at_packets = Some(0);
        }
        self.sessions.insert(entry);
        self.by_id.insert(id, key);
        self.schedule(key, now);
        for (stream, leg, params) in handshakes {
            if let Some(params) = params {
                self.open_handshake(id, stream, leg, params);
            }
        }
        Ok(())
    }

    /// Snapshots of sessions that moved since their last one (all of them
    /// when `all`).
    fn snapshots(&mut self, now: Instant, all: bool, from: usize, limit: usize) -> SnapshotPage {
        let limit = limit.max(1);
        let mut taken = Vec::new();
        // Route reads count toward the page too (a kernel route's is a
        // syscall, at most MAX_ROUTES a session), so a page's work stays
        // bounded when most sessions are unchanged and skipped.
        let mut reads = 0;
        for key in from..self.sessions.capacity() {
            let Some(entry) = self.sessions.get(key) else {
                continue;
            };
            if taken.len() >= limit || reads >= limit {
                return (taken, Some(key));
            }
            // Judged and stamped on what its fast paths forwarded until
            // now: unread, a session on lanes would look unchanged and be
            // skipped, or be stored with older numbers than its stamp.
            if !entry.routes.is_empty() {
                self.read_routes(key);
                reads += 1;
            }
            let Some(entry) = self.sessions.get_mut(key) else {
                continue;
            };
            let packets = entry.session.packets_in();
            if all || entry.snapshot_at_packets != Some(packets) {
                entry.snapshot_at_packets = Some(packets);
                taken.push((entry.session.id(), entry.session.snapshot(now)));
            }
        }
        (taken, None)
    }

    /// Registers a leg's sockets and keeps its lease; a BUNDLE follower
    /// (no sockets) sends through its transport owner's.
    // The leg's place (session, stream, leg) and what to install there.
    #[allow(clippy::too_many_arguments)]
    fn install_leg(
        &mut self,
        entry: &mut Entry,
        key: usize,
        stream: StreamIndex,
        leg: LegId,
        sockets: Option<LegSockets>,
        dtls: Option<DtlsParams>,
        registered: &mut Vec<usize>,
    ) -> io::Result<()> {
        let follower = entry.session.is_bundle_follower(stream, leg);
        let sockets = match (sockets, follower) {
            (Some(sockets), false) => sockets,
            (None, true) => {
                let owner = entry
                    .session
                    .bundle_owner(stream, leg)
                    .and_then(|(owner, owner_leg)| {
                        entry
                            .tokens
                            .get(owner.0)
                            .map(|tokens| tokens[owner_leg.index()])
                    })
                    .filter(|tokens| tokens[0] != NO_TOKEN)
                    .ok_or_else(|| io::Error::other("a bundled leg's transport is not open"))?;
                entry.tokens[stream.0][leg.index()] = owner;
                return Ok(());
            }
            (Some(_), true) => {
                return Err(io::Error::other(
                    "a bundled leg was given sockets of its own",
                ));
            }
            (None, false) => return Err(io::Error::other("a leg was given no sockets")),
        };
        let bundled = entry.session.owns_bundle(stream, leg);
        let LegSockets { rtp, rtcp, lease } = sockets;
        entry.leases[stream.0][leg.index()] = Some(lease);
        // The handshake sends from the leg's own port (the peer's ICE
        // pair), through a second descriptor of the same socket, handed
        // over only once the leg is registered (a failed registration must
        // not leave that descriptor holding the port).
        let handshake_socket = match (dtls, &self.dtls) {
            (Some(_), Some(_)) => Some(rtp.try_clone()?),
            (Some(_) | None, None) | (None, Some(_)) => None,
        };
        let rtp_token = self.register(rtp, key, stream, leg, Component::Rtp)?;
        registered.push(rtp_token);
        self.sockets[rtp_token].bundled = bundled;
        // Recorded at once, so a failure below still closes this socket
        // with the leg.
        entry.tokens[stream.0][leg.index()] = [rtp_token, rtp_token];
        if let Some(rtcp) = rtcp {
            let token = self.register(rtcp, key, stream, leg, Component::Rtcp)?;
            registered.push(token);
            entry.tokens[stream.0][leg.index()][Component::Rtcp.index()] = token;
        }
        if let (Some(params), Some(socket), Some(thread)) = (dtls, handshake_socket, &self.dtls) {
            let key = LegKey {
                session: entry.session.id(),
                stream,
                leg,
            };
            if !self.hand_to_dtls(thread, key, socket, params) {
                return Err(io::Error::other("the DTLS thread has stopped"));
            }
        }
        Ok(())
    }

    fn register(
        &mut self,
        socket: std::net::UdpSocket,
        session: usize,
        stream: StreamIndex,
        leg: LegId,
        component: Component,
    ) -> io::Result<usize> {
        let mut socket = UdpSocket::from_std(socket);
        let slot = self.sockets.vacant_entry();
        let token = slot.key();
        self.poll
            .registry()
            .register(&mut socket, Token(token), Interest::READABLE)?;
        slot.insert(SocketEntry {
            socket,
            session,
            stream,
            leg,
            component,
            bundled: false,
            lane: None,
        });
        Ok(token)
    }

    fn begin_transfer(
        &mut self,
        now: Instant,
        id: SessionId,
        setup: TransferSetup,
    ) -> Result<(), DataplaneError> {
        let key = *self.by_id.get(&id).ok_or(DataplaneError::NoSession(id))?;
        let TransferSetup {
            transfer,
            legs,
            mode,
            timeout,
        } = setup;
        let pending: Vec<_> = legs.iter().map(|l| l.leg).collect();
        let tags: Vec<_> = legs.iter().map(|l| l.bundle).collect();
        let sockets: Vec<_> = legs.into_iter().map(|l| l.sockets).collect();
        let opened = self.sessions[key]
            .session
            .begin_transfer(now, transfer, &pending, mode, timeout)
            .map_err(DataplaneError::Transfer);
        // The session's earlier events first (the retired legs it closed, a
        // previous transfer's completion): they are reported before this
        // one's outcome.
        self.collect_events(key, now);
        let opened = opened?;
        let Some(mut entry) = self.sessions.try_remove(key) else {
            return Err(DataplaneError::NoSession(id));
        };
        let mut registered = Vec::new();
        let mut result = Ok(());
        let bundle_tags: Vec<_> = opened
            .iter()
            .zip(&tags)
            .enumerate()
            .map(|(index, (&leg, &tag))| (StreamIndex(index), leg, tag))
            .collect();
        if let Err(e) = entry.session.set_bundles(&bundle_tags) {
            result = Err(DataplaneError::Sockets(e.to_string()));
        }
        for (index, (leg, sockets)) in opened.into_iter().zip(sockets).enumerate() {
            if result.is_err() {
                break;
            }
            let dtls = pending.get(index).and_then(|p| p.config.dtls);
            if let Err(e) = self.install_leg(
                &mut entry,
                key,
                StreamIndex(index),
                leg,
                sockets,
                dtls,
                &mut registered,
            ) {
                result = Err(DataplaneError::Sockets(format!(
                    "cannot register the new device's sockets: {e}"
                )));
                break;
            }
        }
        if result.is_err() {
            // Nothing of this transfer stays: its legs close again.
            let _ = entry.session.cancel(Some(transfer));
        }
        self.reinsert(key, entry);
        self.collect_events(key, now);
        result
    }

    /// Puts back a session taken out with `try_remove(key)` (to borrow it
    /// beside the socket table). The slab hands out the key freed last, so
    /// it lands under the same key, which socket entries and `by_id` name.
    fn reinsert(&mut self, key: usize, entry: Entry) {
        let reinserted = self.sessions.insert(entry);
        assert_eq!(reinserted, key, "a session moved in the slab");
    }

    /// Closes a leg's sockets, then frees its ports.
    fn close_leg(&mut self, key: usize, stream: StreamIndex, leg: LegId) {
        // A lane lives on its input socket and holds a duplicate of its
        // output leg's own socket: its route ends with either leg, so that
        // no duplicate outlives its socket's entry (it would keep the port
        // bound after its lease went back).
        self.end_routes(key, |_, route| {
            route.stream == stream && (route.path.from == leg || route.path.to == leg)
        });
        let Some(entry) = self.sessions.get_mut(key) else {
            return;
        };
        let Some(tokens) = entry.tokens.get_mut(stream.0) else {
            return;
        };
        let tokens = std::mem::replace(&mut tokens[leg.index()], [NO_TOKEN; 2]);
        let lease = entry.leases[stream.0][leg.index()].take();
        if let (Some(dtls), true) = (&self.dtls, tokens[0] != NO_TOKEN) {
            let key = LegKey {
                session: entry.session.id(),
                stream,
                leg,
            };
            let _ = dtls.send(DtlsCommand::Close { key });
        }
        for (i, &token) in tokens.iter().enumerate() {
            // With rtcp-mux the RTCP token repeats the RTP one; a bundle
            // follower's tokens are its owner's sockets.
            if token == NO_TOKEN
                || (i == 1 && token == tokens[0])
                || self.sockets.get(token).is_some_and(|socket| {
                    (socket.session, socket.stream, socket.leg) != (key, stream, leg)
                })
            {
                continue;
            }
            if let Some(mut socket) = self.sockets.try_remove(token) {
                let _ = self.poll.registry().deregister(&mut socket.socket);
            }
            // Followers that sent through this socket have no transport
            // now (they close with their owner; this keeps a reused slot
            // from ever carrying their packets).
            if let Some(entry) = self.sessions.get_mut(key) {
                for other in entry.tokens.iter_mut().flatten() {
                    if other.contains(&token) {
                        *other = [NO_TOKEN; 2];
                    }
                }
            }
        }
        drop(lease);
    }

    /// Closes a session's sockets, then returns its ports to the pool.
    fn remove_session(&mut self, key: usize) {
        self.end_routes(key, |_, _| true);
        let Some(entry) = self.sessions.get(key) else {
            return;
        };
        let streams = entry.tokens.len();
        for stream in 0..streams {
            for leg in LegId::all() {
                self.close_leg(key, StreamIndex(stream), leg);
            }
        }
        let entry = self.sessions.remove(key);
        self.by_id.remove(&entry.session.id());
    }

    /// Periodic work: events the control plane could not take before, and
    /// the timeouts of the sessions that are due.
    fn tick(&mut self, now: Instant) {
        let backlog = std::mem::take(&mut self.undelivered);
        for event in backlog {
            self.deliver(event);
        }
        while let Some(&Reverse((at, key))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let Some(entry) = self.sessions.get_mut(key) else {
                continue;
            };
            if entry.look_at != Some(at) {
                continue; // superseded by an earlier look
            }
            entry.look_at = None;
            if entry.session.poll_timeout() <= now {
                // Media the kernel forwarded counts as activity.
                self.read_routes(key);
                if let Some(entry) = self.sessions.get_mut(key)
                    && entry.session.poll_timeout() <= now
                {
                    entry.session.handle_timeout(now);
                }
                self.collect_events(key, now);
            }
            self.schedule(key, now);
        }
        self.route_tick(now);
    }

    /// Puts the session's next look at its timeouts in `deadlines`: its
    /// next deadline, but no later than [`LOOK_AT_LEAST_EVERY`] from now.
    /// A look already due sooner stands.
    fn schedule(&mut self, key: usize, now: Instant) {
        let Some(entry) = self.sessions.get_mut(key) else {
            return;
        };
        // Not before the next tick: a look that left a deadline due would
        // otherwise come round again in the same tick.
        let at = entry
            .session
            .poll_timeout()
            .min(now + LOOK_AT_LEAST_EVERY)
            .max(now + TICK);
        if entry.look_at.is_some_and(|scheduled| scheduled <= at) {
            return;
        }
        entry.look_at = Some(at);
        self.deadlines.push(Reverse((at, key)));
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
            events_lost: self.events_lost
                + self
                    .sessions
                    .iter()
                    .map(|(_, e)| e.session.info_events_dropped())
                    .sum::<u64>(),
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
            kernel: KernelWorkerStats {
                routes: self.kernel.as_ref().map_or(0, KernelMaps::installed),
                ..self.kernel_stats
            },
            lane_packets: self.lane_packets,
            lanes: self.lanes,
        }
    }

    fn shutdown(&mut self) {
        let keys: Vec<usize> = self.sessions.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.remove_session(key);
        }
    }
}

/// Takes in what `route` forwarded: the session's state and counters, and
/// the worker's.
fn absorb(
    session: &mut Session,
    (stream, direction, path): (StreamIndex, Direction, &FastPath),
    progress: &FastProgress,
    stats: &mut KernelWorkerStats,
    forwarded: &mut u64,
    packets_to: &mut [u64; 2],
    bytes_to: &mut [u64; 2],
) {
    if progress.is_empty() {
        return;
    }
    session.absorb(stream, direction, path, progress);
    if !progress.in_kernel {
        // A lane's sends were counted as they left.
        return;
    }
    // The kernel's progress has nothing unsent (only a lane's sends can
    // be refused), so all it took left.
    stats.forwarded += progress.packets;
    stats.bytes += progress.bytes;
    let party = direction.toward();
    *forwarded += progress.packets;
    packets_to[party.index()] += progress.packets;
    bytes_to[party.index()] += progress.bytes;
}

/// Whether `leg` of `stream` carries RTCP on its RTP socket (rtcp-mux: the
/// RTCP token repeats the RTP one).
fn rtcp_muxed(tokens: &[[[usize; 2]; LegId::COUNT]], stream: StreamIndex, leg: LegId) -> bool {
    tokens
        .get(stream.0)
        .is_some_and(|tokens| tokens[leg.index()][0] == tokens[leg.index()][1])
}

/// Queues an event the control plane must not miss; if its queue is full,
/// keeps it for the next tick.
fn deliver(
    events: &mpsc::Sender<WorkerEvent>,
    undelivered: &mut Vec<WorkerEvent>,
    event: WorkerEvent,
) {
    use mpsc::error::TrySendError;
    // Order matters (a transfer's completion before the next one's): while
    // a backlog exists, new events queue behind it.
    if !undelivered.is_empty() {
        undelivered.push(event);
        return;
    }
    if let Err(TrySendError::Full(event) | TrySendError::Closed(event)) = events.try_send(event) {
        warn!("control plane busy; holding worker events");
        undelivered.push(event);
    }
}

/// Sends queued datagrams, one `sendmmsg` per run of the same socket, and
/// accounts them on their legs and in `totals`.
fn send_runs<'a>(
    sockets: &Slab<SocketEntry>,
    sessions: &mut Slab<Entry>,
    queued: &[Outgoing],
    bytes: impl Fn(&Outgoing) -> &'a [u8],
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
        let run = &queued[start];
        match sockets.get(token) {
            Some(socket) => {
                let packets = queued[start..end].iter().map(|q| (q.to, bytes(q)));
                let outcome = send.send(socket.socket.as_fd(), packets);
                totals.sent += outcome.sent as u64;
                totals.failed += outcome.failed as u64;
                if let Some(entry) = sessions.get_mut(run.session) {
                    let party = entry.session.party_of(run.stream, run.leg);
                    totals.packets_to[party.index()] += outcome.sent as u64;
                    totals.bytes_to[party.index()] += outcome.sent_bytes as u64;
                    entry.session.record_sent(
                        run.stream,
                        run.leg,
                        outcome.sent as u64,
                        outcome.sent_bytes as u64,
                    );
                    if outcome.failed > 0 {
                        entry.session.record_drop(
                            run.stream,
                            run.leg,
                            DropReason::SendFailed,
                            outcome.failed as u64,
                        );
                    }
                }
            }
            None => totals.failed += (end - start) as u64,
        }
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::core::session::{PendingLeg, StreamParams, SwitchMode};
    use crate::core::stream::{LegConfig, PayloadMap, StreamConfig};
    use crate::io::ports::{PortPool, allocate};
    use crate::messages::TransferLeg;

    const LEG: LegConfig = LegConfig {
        rtcp_mux: true,
        peer_rtp: None,
        peer_rtcp: None,
        peer_ip: None,
        crypto: crate::core::stream::LegCrypto::Plain,
        ice: None,
        dtls: None,
    };

    fn worker() -> (Worker, crossbeam_channel::Sender<Command>) {
        let (commands, queue) = crossbeam_channel::bounded(8);
        let (events, _) = mpsc::channel(8);
        let timeouts = Timeouts {
            media: Duration::from_secs(60),
            setup: Duration::from_secs(60),
            hold: Duration::from_secs(60),
        };
        let poll = Poll::new().expect("poll");
        let stop = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER).expect("waker"));
        let worker = Worker::new(
            WorkerId(0),
            poll,
            queue,
            events,
            timeouts,
            stop,
            (waker, None),
        )
        .expect("worker");
        (worker, commands)
    }

    fn stream(pool: &Arc<Mutex<PortPool>>) -> StreamSetup {
        StreamSetup {
            params: StreamParams {
                config: StreamConfig {
                    learning_window: Duration::from_secs(5),
                    relearn: false,
                    asymmetric: false,
                },
                clock_rates: vec![(0, 8000)],
                formats: Vec::new(),
                telephone_event: None,
                device: LEG,
                remote: LEG,
            },
            sockets: [
                Some(allocate(pool, true).expect("ports")),
                Some(allocate(pool, true).expect("ports")),
            ],
            bundle: [None, None],
        }
    }

    fn pool() -> Arc<Mutex<PortPool>> {
        Arc::new(Mutex::new(PortPool::new(
            "127.0.0.1".parse().expect("ip"),
            47100,
            47199,
        )))
    }

    fn free_pairs(pool: &Arc<Mutex<PortPool>>) -> usize {
        pool.lock().expect("pool").free_pairs()
    }

    /// One command answered, as the control plane waits for it.
    fn run<T: std::fmt::Debug>(
        worker: &mut Worker,
        commands: &crossbeam_channel::Sender<Command>,
        command: impl FnOnce(Reply<T>) -> Command,
    ) -> T {
        let (reply, answer) = oneshot::channel();
        commands.send(command(reply)).expect("queued");
        assert!(worker.handle_commands());
        answer.blocking_recv().expect("answer")
    }

    /// Two streams whose device legs share stream 0's socket (BUNDLE).
    fn bundled_streams(pool: &Arc<Mutex<PortPool>>) -> Vec<StreamSetup> {
        let tag = |mid: &str| {
            Some(crate::core::bundle::BundleTag {
                primary: StreamIndex(0),
                mid: crate::core::bundle::Mid::new(mid).expect("mid"),
                mid_extension: None,
            })
        };
        let mut owner = stream(pool);
        owner.bundle[0] = tag("0");
        let mut follower = stream(pool);
        drop(follower.sockets[0].take());
        follower.bundle[0] = tag("1");
        // The remote party is a browser too, on a transport of its own per
        // stream here: bundles of one stream, with the same MIDs.
        owner.bundle[1] = tag("0");
        vec![owner, follower]
    }

    /// On a leg that accepts any source (asymmetric), a datagram from
    /// another address stops the lane and the session takes the lane's
    /// progress in before it judges that datagram: a copy of a packet the
    /// lane already sent is a duplicate to it, never sent again with a
    /// number of its own.
    #[test]
    fn another_address_on_an_asymmetric_leg_takes_the_lane_back_first() {
        use std::net::UdpSocket as StdSocket;
        let pool = pool();
        let (mut worker, commands) = worker();
        worker.lanes_on = true;
        let device = StdSocket::bind("127.0.0.1:0").expect("bind");
        let remote = StdSocket::bind("127.0.0.1:0").expect("bind");
        let other = StdSocket::bind("127.0.0.1:0").expect("bind");
        remote
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut setup = stream(&pool);
        setup.params.config.asymmetric = true;
        setup.params.device.peer_rtp = Some(device.local_addr().expect("addr"));
        setup.params.remote.peer_rtp = Some(remote.local_addr().expect("addr"));
        let relay_user = setup.sockets[0]
            .as_ref()
            .map(|s| s.rtp.local_addr().expect("addr"))
            .expect("sockets");
        let added = run(&mut worker, &commands, |reply| Command::Add {
            id: SessionId(1),
            streams: vec![setup],
            resume: None,
            reply,
        });
        assert_eq!(added, Ok(()));
        let key = worker.by_id[&SessionId(1)];
        let token = worker.sessions[key].tokens[0][LegId::FIRST_DEVICE.index()][0];
        let (mut recv, mut send) = (RecvBatch::new(), SendBatch::new());
        let mut heard = Vec::new();
        let mut deliver = |worker: &mut Worker, from: &StdSocket, seq: u16| {
            from.send_to(&audio(seq, 0xA), relay_user).expect("send");
            std::thread::sleep(Duration::from_millis(2));
            let socket = &worker.sockets[token].socket;
            let received = recv.recv(socket.as_fd()).expect("received");
            worker.process_batch(Instant::now(), token, &mut recv, received, &mut send);
            let mut buf = [0u8; 2048];
            if remote.recv_from(&mut buf).is_ok() {
                heard.push(u16::from_be_bytes([buf[2], buf[3]]));
            }
        };
        for seq in 1..=60 {
            deliver(&mut worker, &device, seq);
        }
        worker.visit_routes(key, Instant::now(), None);
        assert_eq!(worker.lanes, 1, "the device's direction is on a lane");
        for seq in 61..=70 {
            deliver(&mut worker, &device, seq);
        }
        assert_eq!(worker.lane_packets, 10);
        // A copy of packet 68 from another address: the session must know
        // the lane sent 68 already.
        deliver(&mut worker, &other, 68);
        assert_eq!(worker.lanes, 0, "the lane was taken back");
        deliver(&mut worker, &device, 71);
        assert_eq!(
            heard.len(),
            71,
            "every device packet once, the copy never: {heard:?}"
        );
        for pair in heard.windows(2) {
            assert_eq!(pair[1], pair[0].wrapping_add(1), "{heard:?}");
        }
    }

    /// A socket on 127.0.0.1 whose reads give up after 100 ms.
    fn peer_socket() -> std::net::UdpSocket {
        peer_socket_at("127.0.0.1")
    }

    /// A socket on loopback address `ip` whose reads give up after 100 ms.
    fn peer_socket_at(ip: &str) -> std::net::UdpSocket {
        let socket = std::net::UdpSocket::bind((ip, 0)).expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        socket
    }

    /// Audio packet `seq` of SSRC `ssrc`, 20 ms apart in timestamps.
    fn audio(seq: u16, ssrc: u8) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, ssrc];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p.extend_from_slice(&[0xd5; 160]);
        p
    }

    /// Sends `bytes` from `from` to the relay socket `token` and runs the
    /// worker over it as `drain` does; true when `at` got what the relay
    /// forwarded.
    fn deliver(
        worker: &mut Worker,
        from: &std::net::UdpSocket,
        token: usize,
        bytes: &[u8],
        at: &std::net::UdpSocket,
    ) -> bool {
        let to = worker.sockets[token].socket.local_addr().expect("addr");
        from.send_to(bytes, to).expect("send");
        std::thread::sleep(Duration::from_millis(2));
        let (mut recv, mut send) = (RecvBatch::new(), SendBatch::new());
        let socket = &worker.sockets[token].socket;
        let received = recv.recv(socket.as_fd()).expect("received");
        worker.process_batch(Instant::now(), token, &mut recv, received, &mut send);
        at.recv_from(&mut [0u8; 2048]).is_ok()
    }

    /// A call `id` on lanes: `setup`'s remote at `remote`, a learned
    /// device at `device`, 60 packets each way through the session and
    /// then a visit. Returns the session's key and its device and remote
    /// sockets' tokens.
    fn call_on_lanes(
        worker: &mut Worker,
        commands: &crossbeam_channel::Sender<Command>,
        id: u64,
        mut setup: StreamSetup,
        (device, remote): (&std::net::UdpSocket, &std::net::UdpSocket),
    ) -> (usize, usize, usize) {
        worker.lanes_on = true;
        setup.params.remote.peer_rtp = Some(remote.local_addr().expect("addr"));
        let added = run(worker, commands, |reply| Command::Add {
            id: SessionId(id),
            streams: vec![setup],
            resume: None,
            reply,
        });
        assert_eq!(added, Ok(()));
        let key = worker.by_id[&SessionId(id)];
        let tokens = worker.sessions[key].tokens[0];
        let (user, far) = (
            tokens[LegId::FIRST_DEVICE.index()][0],
            tokens[LegId::REMOTE.index()][0],
        );
        // (The device's first packets prove it on probation; the remote's
        // wait for its address.)
        for seq in 1..=60 {
            deliver(worker, device, user, &audio(seq, 0xA), remote);
            deliver(worker, remote, far, &audio(seq, 0xB), device);
        }
        worker.visit_routes(key, Instant::now(), None);
        let lanes = [user, far]
            .iter()
            .filter(|&&token| worker.sockets[token].lane.is_some())
            .count();
        assert_eq!(lanes, 2, "both directions on lanes");
        (key, user, far)
    }

    /// A lane holds a duplicate of its output socket: it must end with
    /// that socket's leg, or the duplicate would keep the port bound after
    /// its lease went back to the pool (and the next call to get the port
    /// could not bind it). Signalling ends a session's lanes before it
    /// closes legs, so this closes a leg under its lanes directly.
    #[test]
    fn closing_a_leg_ends_the_lanes_through_it_and_frees_its_port() {
        let pool = pool();
        let (mut worker, commands) = worker();
        let (device, remote) = (peer_socket(), peer_socket());
        let (key, user, far) =
            call_on_lanes(&mut worker, &commands, 1, stream(&pool), (&device, &remote));
        let address = |token: usize| worker.sockets[token].socket.local_addr().expect("addr");
        let (user_port, far_port) = (address(user), address(far));
        // The remote's lane sends through the device's socket.
        worker.close_leg(key, StreamIndex(0), LegId::FIRST_DEVICE);
        assert!(
            worker.sockets.get(user).is_none(),
            "the device's socket closed"
        );
        assert!(
            worker.sockets.get(far).is_some_and(|s| s.lane.is_none()),
            "the lane toward the device ended with its socket"
        );
        assert_eq!(worker.lanes, 0);
        assert!(worker.sessions[key].routes.is_empty());
        std::net::UdpSocket::bind(user_port).expect("the device's port is free");
        let removed = run(&mut worker, &commands, |reply| Command::Remove {
            id: SessionId(1),
            reply,
        });
        assert!(removed.is_ok());
        std::net::UdpSocket::bind(far_port).expect("the remote's port is free");
    }

    /// A device that moves to another address (NAT rebinding, with
    /// re-learning on) gets the remote's next packet there: the lane
    /// toward it, which sends to a fixed address, ends as the session
    /// learns the new one, not at the next visit a second later.
    #[test]
    fn a_relearned_device_gets_the_remotes_next_packet_at_its_new_address() {
        let pool = pool();
        let (mut worker, commands) = worker();
        // The device's new network: an address no route names.
        let (device, moved, remote) = (peer_socket(), peer_socket_at("127.0.0.2"), peer_socket());
        let mut setup = stream(&pool);
        // The device's address is learned from its packets (a signalled
        // one is never re-learned).
        setup.params.config.relearn = true;
        let (_, user, far) = call_on_lanes(&mut worker, &commands, 1, setup, (&device, &remote));
        // A duplicate takes the device's own lane back (the session has
        // its direction until the next visit); the remote's stays.
        deliver(&mut worker, &device, user, &audio(60, 0xA), &remote);
        assert_eq!(worker.lanes, 1, "the remote's lane only");
        // The device's next packet comes from its new address.
        assert!(deliver(&mut worker, &moved, user, &audio(61, 0xA), &remote));
        assert_eq!(worker.lanes, 0, "the lane toward the old address ended");
        assert!(
            deliver(&mut worker, &remote, far, &audio(61, 0xB), &moved),
            "the remote's next packet reaches the device where it is now"
        );
        assert!(
            device.recv_from(&mut [0u8; 2048]).is_err(),
            "none to where it was"
        );
    }

    /// RTCP is read against what the lanes forwarded, also where the
    /// peer's RTCP has an address of its own (a=rtcp with another IP);
    /// a stranger's RTCP-looking bytes cost no reads.
    #[test]
    fn rtcp_from_the_peers_own_rtcp_address_finds_the_lanes_counts_taken_in() {
        let pool = pool();
        let (mut worker, commands) = worker();
        let (device, remote) = (peer_socket(), peer_socket());
        let (device_rtcp, stranger) = (peer_socket_at("127.0.0.2"), peer_socket_at("127.0.0.3"));
        let mut setup = stream(&pool);
        setup.sockets[0] = Some(allocate(&pool, false).expect("ports"));
        setup.params.device.rtcp_mux = false;
        setup.params.device.peer_rtcp = Some(device_rtcp.local_addr().expect("addr"));
        let (key, user, _) = call_on_lanes(&mut worker, &commands, 1, setup, (&device, &remote));
        let user_rtcp = worker.sessions[key].tokens[0][LegId::FIRST_DEVICE.index()][1];
        for seq in 61..=100 {
            assert!(deliver(
                &mut worker,
                &device,
                user,
                &audio(seq, 0xA),
                &remote
            ));
        }
        assert_eq!(worker.lane_packets, 40, "the device's last 40 on its lane");
        let packets_in = |worker: &Worker| worker.sessions[key].session.packets_in();
        // A receiver report (RFC 3550 §6.4.2) with no blocks.
        let report = [0x80, 201, 0, 1, 0, 0, 0, 0xA];
        deliver(&mut worker, &stranger, user_rtcp, &report, &remote);
        assert_eq!(packets_in(&worker), 60 + 60, "the lane was not read");
        deliver(&mut worker, &device_rtcp, user_rtcp, &report, &remote);
        assert_eq!(
            packets_in(&worker),
            100 + 60 + 1,
            "the device's 100 RTP and its report, and the remote's 60"
        );
    }

    /// Snapshots for the standby are judged on what the lanes forwarded:
    /// a call whose packets since its last snapshot all went through lanes
    /// is in the next round, however the rounds are paged.
    #[test]
    fn a_call_on_lanes_is_snapshotted_when_its_lanes_moved() {
        let pool = pool();
        let (mut worker, commands) = worker();
        let peers: Vec<_> = (0..4).map(|_| peer_socket()).collect();
        let (_, first_user, _) = call_on_lanes(
            &mut worker,
            &commands,
            1,
            stream(&pool),
            (&peers[0], &peers[1]),
        );
        let (_, second_user, _) = call_on_lanes(
            &mut worker,
            &commands,
            2,
            stream(&pool),
            (&peers[2], &peers[3]),
        );
        // Rounds of pages of one, as the control plane asks for them.
        let round = |worker: &mut Worker| {
            let (mut ids, mut from) = (Vec::new(), 0);
            for _ in 0..100 {
                let (page, next) = worker.snapshots(Instant::now(), false, from, 1);
                ids.extend(page.into_iter().map(|(id, _)| id));
                match next {
                    Some(next) => {
                        assert!(next > from, "each page moves on");
                        from = next;
                    }
                    None => return ids,
                }
            }
            panic!("a round of two sessions ends");
        };
        assert_eq!(round(&mut worker), [SessionId(1), SessionId(2)]);
        assert_eq!(round(&mut worker), [], "nothing moved");
        for seq in 61..=70 {
            deliver(
                &mut worker,
                &peers[2],
                second_user,
                &audio(seq, 0xA),
                &peers[3],
            );
        }
        assert_eq!(worker.lane_packets, 10);
        assert_eq!(round(&mut worker), [SessionId(2)]);
        deliver(
            &mut worker,
            &peers[0],
            first_user,
            &audio(61, 0xA),
            &peers[1],
        );
        assert_eq!(round(&mut worker), [SessionId(1)]);
    }

    /// A bundle's sockets belong to its owner: the follower opens none and
    /// closes none, a transfer away from the bundle and the session's end
    /// leave every port free, and bundles that do not hold together are
    /// refused with nothing left bound.
    #[test]
    fn a_bundled_leg_shares_its_owners_socket_and_frees_nothing_twice() {
        let pool = pool();
        let (mut worker, commands) = worker();
        let before = free_pairs(&pool);
        let streams = bundled_streams(&pool);
        assert_eq!(free_pairs(&pool), before - 3, "three sockets for four legs");
        let added = run(&mut worker, &commands, |reply| Command::Add {
            id: SessionId(1),
            streams,
            resume: None,
            reply,
        });
        assert_eq!(added, Ok(()));
        let key = worker.by_id[&SessionId(1)];
        let tokens = &worker.sessions[key].tokens;
        assert_eq!(
            tokens[0][LegId::FIRST_DEVICE.index()],
            tokens[1][LegId::FIRST_DEVICE.index()],
            "the follower sends through the owner's socket"
        );
        let owner = tokens[0][LegId::FIRST_DEVICE.index()][0];
        assert!(worker.sockets[owner].bundled);
        assert_eq!(worker.sockets.len(), 3);

        // The call moves to a device with a socket per stream.
        let legs = (0..2)
            .map(|_| TransferLeg {
                leg: PendingLeg {
                    config: LEG,
                    payloads: PayloadMap::identity([0], None),
                },
                sockets: Some(allocate(&pool, true).expect("ports")),
                bundle: None,
            })
            .collect();
        let begun = run(&mut worker, &commands, |reply| Command::BeginTransfer {
            id: SessionId(1),
            setup: TransferSetup {
                transfer: TransferId(1),
                legs,
                mode: SwitchMode::Commit,
                timeout: Duration::from_secs(30),
            },
            reply,
        });
        assert_eq!(begun, Ok(()));
        let committed = run(&mut worker, &commands, |reply| Command::Commit {
            id: SessionId(1),
            transfer: TransferId(1),
            reply,
        });
        assert_eq!(committed, Ok(()));
        let removed = run(&mut worker, &commands, |reply| Command::Remove {
            id: SessionId(1),
            reply,
        });
        assert!(removed.is_ok());
        assert_eq!(free_pairs(&pool), before, "every port is free again");
        assert!(worker.sockets.is_empty());

        // A follower given sockets of its own, and one whose owner is not
        // the first stream of its bundle: refused, nothing left bound.
        let mut streams = bundled_streams(&pool);
        streams[1].sockets[0] = Some(allocate(&pool, true).expect("ports"));
        let added = run(&mut worker, &commands, |reply| Command::Add {
            id: SessionId(2),
            streams,
            resume: None,
            reply,
        });
        assert!(
            matches!(added, Err(DataplaneError::Sockets(_))),
            "{added:?}"
        );
        let mut streams = bundled_streams(&pool);
        streams[0].bundle[0] = None;
        let added = run(&mut worker, &commands, |reply| Command::Add {
            id: SessionId(3),
            streams,
            resume: None,
            reply,
        });
        assert!(
            matches!(added, Err(DataplaneError::Sockets(_))),
            "{added:?}"
        );
        assert!(worker.by_id.is_empty());
        assert!(worker.sockets.is_empty());
        assert_eq!(free_pairs(&pool), before);
    }

    /// Snapshots come a page at a time, and only for sessions whose media
    /// moved since their last one (all of them when asked for all).
    #[test]
    fn snapshots_come_in_pages_and_only_for_moved_sessions() {
        let pool = pool();
        let (mut worker, commands) = worker();
        for id in 1..=3 {
            let added = run(&mut worker, &commands, |reply| Command::Add {
                id: SessionId(id),
                streams: vec![stream(&pool)],
                resume: None,
                reply,
            });
            assert_eq!(added, Ok(()));
        }
        let page = |worker: &mut Worker, all: bool, from: usize| {
            run(worker, &commands, |reply| Command::Snapshots {
                all,
                from,
                limit: 2,
                reply,
            })
        };
        let (first, next) = page(&mut worker, false, 0);
        assert_eq!(first.len(), 2, "never snapshotted: taken");
        let next = next.expect("a second page");
        let (second, last) = page(&mut worker, false, next);
        assert_eq!((second.len(), last), (1, None));
        let (again, _) = page(&mut worker, false, 0);
        assert!(again.is_empty(), "nothing moved since");
        let (forced, _) = page(&mut worker, true, 0);
        assert_eq!(forced.len(), 2, "all asked for: a full page");
    }

    /// Review finding: a create that gave up waiting left the session on
    /// the worker, unknown to the control plane, holding its ports for ever.
    #[test]
    fn a_session_added_after_its_create_gave_up_is_removed_again() {
        let pool = pool();
        let (mut worker, commands) = worker();
        let before = free_pairs(&pool);
        let (reply, answer) = oneshot::channel();
        drop(answer);
        let add = Command::Add {
            id: SessionId(1),
            streams: vec![stream(&pool)],
            resume: None,
            reply,
        };
        commands.send(add).expect("queued");
        assert!(worker.handle_commands());
        assert!(worker.by_id.is_empty(), "no session nobody knows");
        assert_eq!(free_pairs(&pool), before, "its ports are free again");
    }

    /// The same for a transfer: one opened after its request gave up is
    /// rolled back, so it cannot wedge the session's next transfer.
    #[test]
    fn a_transfer_opened_after_its_request_gave_up_is_rolled_back() {
        let pool = pool();
        let (mut worker, commands) = worker();
        let (reply, answer) = oneshot::channel();
        let add = Command::Add {
            id: SessionId(1),
            streams: vec![stream(&pool)],
            resume: None,
            reply,
        };
        commands.send(add).expect("queued");
        assert!(worker.handle_commands());
        assert_eq!(answer.blocking_recv().expect("answer"), Ok(()));
        let with_session = free_pairs(&pool);

        let (reply, answer) = oneshot::channel();
        drop(answer);
        let setup = TransferSetup {
            transfer: TransferId(7),
            legs: vec![TransferLeg {
                leg: PendingLeg {
                    config: LEG,
                    payloads: PayloadMap::identity([0], None),
                },
                sockets: Some(allocate(&pool, true).expect("ports")),
                bundle: None,
            }],
            mode: SwitchMode::Commit,
            timeout: Duration::from_secs(30),
        };
        let begin = Command::BeginTransfer {
            id: SessionId(1),
            setup,
            reply,
        };
        commands.send(begin).expect("queued");
        assert!(worker.handle_commands());
        assert_eq!(free_pairs(&pool), with_session, "the new legs closed");
        let (reply, answer) = oneshot::channel();
        commands
            .send(Command::Inspect {
                id: SessionId(1),
                reply,
            })
            .expect("queued");
        assert!(worker.handle_commands());
        let report = answer.blocking_recv().expect("answer").expect("session");
        assert_eq!(report.transfer, None, "nothing pending");
    }
}
