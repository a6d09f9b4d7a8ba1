//! baton's data plane: media worker threads that forward and rewrite RTP and
//! RTCP between the legs of each session.
//!
//! - [`stream`]: the per-stream state machine (sans-IO: source policy,
//!   routing, counters), where the rules live and are unit-tested.
//! - [`rtp`]: zero-copy RTP/RTCP views; [`stats`]: RFC 3550 loss and jitter.
//! - [`worker`]: the thread that owns sockets and runs the state machines.
//! - [`ports`]: relay port pairs; [`sys`]: batched syscalls (the only
//!   `unsafe` code).
//! - [`Dataplane`]: the handle the control plane holds.

pub mod continuity;
pub mod ports;
pub mod rtcp_translate;
pub mod rtp;
pub mod stats;
pub mod stream;
pub mod sys;
pub mod worker;

use std::any::Any;
use std::fmt;
use std::net::IpAddr;
use std::panic::{self, AssertUnwindSafe};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, TrySendError};
use mio::{Poll, Waker};
use tokio::sync::mpsc;

use crate::ports::{LegSockets, PortError, PortPool};
use crate::worker::{Command, Timeouts, Worker, WorkerEvent};

/// A session's relay-assigned id, shown as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for SessionId {
    type Err = std::num::ParseIntError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(text, 16).map(Self)
    }
}

/// How the data plane is set up.
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    /// Worker threads.
    pub workers: usize,
    /// Local IPs to bind media on, at most one per address family.
    pub media_ips: Vec<IpAddr>,
    /// Lowest and highest relay port.
    pub ports: (u16, u16),
    /// Session timeouts.
    pub timeouts: Timeouts,
    /// Commands queued per worker before the control plane is told the
    /// worker is busy.
    pub command_queue: usize,
    /// Workers spin on epoll instead of sleeping in it: lower latency, one
    /// core per worker at 100 % whatever the load.
    pub busy_poll: bool,
}

/// Why a command could not be queued for a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The worker's queue is full.
    #[error("media worker {0} is overloaded (command queue full)")]
    Full(usize),
    /// The worker has stopped.
    #[error("media worker {0} has stopped")]
    Stopped(usize),
}

struct WorkerHandle {
    commands: Sender<Command>,
    waker: Arc<Waker>,
    /// Set to stop the worker even when its command queue is full.
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What every worker is started with (again, after a failure).
struct WorkerTemplate {
    timeouts: Timeouts,
    command_queue: usize,
    busy_poll: bool,
    /// Taken at shutdown, so that the event channel closes once the
    /// workers have ended and its reader sees the end.
    events: Mutex<Option<mpsc::Sender<WorkerEvent>>>,
}

/// The running data plane: port pools and worker threads.
pub struct Dataplane {
    /// One slot per worker; a failed worker's slot gets a new worker. The
    /// lock is taken per control command, never per packet.
    workers: Vec<Mutex<WorkerHandle>>,
    pools: Vec<Arc<Mutex<PortPool>>>,
    template: WorkerTemplate,
}

/// Starts worker `index`. Its thread catches a panic (a bug) and reports it
/// as [`WorkerEvent::WorkerFailed`]: the worker's sessions are lost with it,
/// but the rest of the relay keeps forwarding.
fn spawn_worker(index: usize, template: &WorkerTemplate) -> std::io::Result<WorkerHandle> {
    let events = template
        .events
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .ok_or_else(|| std::io::Error::other("the data plane has shut down"))?;
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), worker::WAKER)?);
    let (commands, receiver) = crossbeam_channel::bounded(template.command_queue);
    let stop = Arc::new(AtomicBool::new(false));
    let worker = Worker::new(
        index,
        poll,
        receiver,
        events.clone(),
        template.timeouts,
        Arc::clone(&stop),
    )?
    .busy_poll(template.busy_poll);
    let thread = std::thread::Builder::new()
        .name(format!("baton-worker-{index}"))
        .spawn(move || {
            // Unwinding drops the worker: its sockets close and their ports
            // go back to the pools, so nothing leaks with the sessions.
            let reason = match panic::catch_unwind(AssertUnwindSafe(move || worker.run())) {
                Ok(Ok(())) => return,
                Ok(Err(reason)) => reason,
                Err(payload) => panic_message(payload.as_ref()),
            };
            // A plain thread, outside any runtime: blocking is allowed, and
            // this event must not be dropped for a full queue.
            let _ = events.blocking_send(WorkerEvent::WorkerFailed {
                worker: index,
                reason,
            });
        })?;
    Ok(WorkerHandle {
        commands,
        waker,
        stop,
        thread: Some(thread),
    })
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
    text.map_or_else(|| "panicked".to_owned(), |text| format!("panicked: {text}"))
}

impl Dataplane {
    /// Starts the workers; their events go to `events`.
    pub fn start(
        config: &DataplaneConfig,
        events: mpsc::Sender<WorkerEvent>,
    ) -> std::io::Result<Self> {
        let (lo, hi) = config.ports;
        let pools = config
            .media_ips
            .iter()
            .map(|&ip| Arc::new(Mutex::new(PortPool::new(ip, lo, hi))))
            .collect();
        let template = WorkerTemplate {
            timeouts: config.timeouts,
            command_queue: config.command_queue,
            busy_poll: config.busy_poll,
            events: Mutex::new(Some(events)),
        };
        let mut workers = Vec::with_capacity(config.workers);
        for index in 0..config.workers {
            workers.push(Mutex::new(spawn_worker(index, &template)?));
        }
        Ok(Self {
            workers,
            pools,
            template,
        })
    }

    /// Starts a new worker in the slot of one that failed (after
    /// [`WorkerEvent::WorkerFailed`]); it begins with no sessions.
    pub fn restart_worker(&self, index: usize) -> std::io::Result<()> {
        let slot = self
            .workers
            .get(index)
            .ok_or_else(|| std::io::Error::other(format!("no media worker {index}")))?;
        let fresh = spawn_worker(index, &self.template)?;
        let old = std::mem::replace(
            &mut *slot.lock().unwrap_or_else(PoisonError::into_inner),
            fresh,
        );
        // The old thread has reported its failure and is ending; joining
        // one that has not quite finished would block the caller, so that
        // one is left to finish on its own.
        if let Some(thread) = old.thread
            && thread.is_finished()
        {
            let _ = thread.join();
        }
        Ok(())
    }

    /// Makes worker `index` panic, as a bug would: for tests of what the
    /// relay does when a worker fails. Nothing in the relay calls it.
    #[doc(hidden)]
    pub fn fail_worker_for_tests(&self, index: usize) -> Result<(), QueueError> {
        self.send(index, Command::Fail)
    }

    /// Number of workers.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Queues a command for a worker and wakes it.
    pub fn send(&self, worker: usize, command: Command) -> Result<(), QueueError> {
        let handle = self
            .workers
            .get(worker)
            .ok_or(QueueError::Stopped(worker))?
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        handle.commands.try_send(command).map_err(|e| match e {
            TrySendError::Full(_) => QueueError::Full(worker),
            TrySendError::Disconnected(_) => QueueError::Stopped(worker),
        })?;
        handle.waker.wake().map_err(|_| QueueError::Stopped(worker))
    }

    /// The local media IPs, in configuration order.
    pub fn media_ips(&self) -> Vec<IpAddr> {
        self.pools
            .iter()
            .map(|p| p.lock().unwrap_or_else(PoisonError::into_inner).ip())
            .collect()
    }

    /// Binds a leg's sockets on the media IP of the wanted family (IPv6 when
    /// `ipv6`), or on the first media IP when `ipv6` is `None`.
    pub fn allocate(&self, ipv6: Option<bool>, rtcp_mux: bool) -> Result<LegSockets, AllocError> {
        let pool = self
            .pools
            .iter()
            .find(|p| {
                let ip = p.lock().unwrap_or_else(PoisonError::into_inner).ip();
                ipv6.is_none_or(|v6| ip.is_ipv6() == v6)
            })
            .ok_or(AllocError::NoMediaIp(ipv6.unwrap_or(false)))?;
        ports::allocate(pool, rtcp_mux).map_err(AllocError::Ports)
    }

    /// Per media IP: (ip, free pairs, pairs in the range).
    pub fn port_usage(&self) -> Vec<(IpAddr, usize, usize)> {
        self.pools
            .iter()
            .map(|p| {
                let pool = p.lock().unwrap_or_else(PoisonError::into_inner);
                (pool.ip(), pool.free_pairs(), pool.capacity())
            })
            .collect()
    }

    /// Stops every worker (ending their sessions) and waits for them.
    pub fn shutdown(&self) {
        self.template
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        for slot in &self.workers {
            let handle = slot.lock().unwrap_or_else(PoisonError::into_inner);
            handle.stop.store(true, Ordering::Relaxed);
            let _ = handle.waker.wake();
        }
        for slot in &self.workers {
            let thread = slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .thread
                .take();
            if let Some(thread) = thread {
                let _ = thread.join();
            }
        }
    }
}

/// Why a leg's sockets could not be had.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// No media IP of the wanted family is configured.
    #[error("no media IP configured for {}", if *.0 { "IPv6" } else { "IPv4" })]
    NoMediaIp(bool),
    /// The pool ran out or could not bind.
    #[error(transparent)]
    Ports(PortError),
}
