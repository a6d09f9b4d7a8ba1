//! The handle the control plane holds: port pools, worker threads, and a
//! typed API over the workers' command queues.
//!
//! Every call names the worker that owns the session and returns a
//! [`DataplaneError`] when the worker is busy, gone, slow, or refuses; the
//! queue, its waker and the reply channels stay inside. Commands to one
//! worker run in the order they were queued.

use std::any::Any;
use std::net::IpAddr;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};
use mio::{Poll, Waker};
use tokio::sync::{mpsc, oneshot};

use crate::core::dtls::Fingerprint;
use crate::core::ids::{SessionId, TransferId, WorkerId};
use crate::core::session::{SessionReport, SessionUpdate, Timeouts};
use crate::core::snapshot::SessionSnapshot;
use crate::io::dtls::{self, DtlsHandle, DtlsIdentity};
use crate::io::kernel::{KernelCounters, KernelPath};
use crate::io::ports::{self, LegSockets, PortError, PortPool};
use crate::io::worker::{self, Command, Worker};
pub use crate::messages::{
    DataplaneError, KernelWorkerStats, LATENCY_BUCKETS_NS, Resume, StreamSetup, TransferLeg,
    TransferSetup, WorkerEvent, WorkerStats,
};

/// Sessions snapshotted per worker command: a worker answers a page between
/// two batches of packets.
const SNAPSHOT_PAGE: usize = 128;

/// The name of the interface that media IPs without one belong to.
pub const DEFAULT_INTERFACE: &str = "default";

/// How long a worker may take to answer a command.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// How the data plane is set up.
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    /// Worker threads.
    pub workers: usize,
    /// Local IPs to bind media on.
    pub media_ips: Vec<IpAddr>,
    /// The named interface each media IP belongs to, by position (at most
    /// one IP per family in an interface); IPs past its end, or all when
    /// it is empty, are the interface `default`.
    pub interface_names: Vec<String>,
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
    /// The relay's DTLS certificate for WebRTC legs; `None` makes a fresh
    /// self-signed one at start.
    pub dtls_identity: Option<Arc<DtlsIdentity>>,
    /// Forward established plain legs in the kernel (eBPF at TC ingress);
    /// see [`crate::io::kernel`]. When the kernel refuses, the relay says
    /// why and forwards in user space.
    pub kernel_forwarding: bool,
    /// Forward the steady plain stream directions the kernel does not take
    /// through a worker's lanes (see [`crate::core::fastpath::Lane`]);
    /// `baton run` turns it on unless told `--user-fast-path false`.
    pub user_fast_path: bool,
}

/// Kernel routes per worker when the fast path is on: two per stream.
const KERNEL_ROUTES_PER_WORKER: u32 = 16_384;

/// Whether the kernel fast path is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelStatus {
    /// Not asked for.
    Off,
    /// Asked for and on, attached to these interfaces.
    On {
        /// Interfaces at whose ingress the program runs.
        interfaces: Vec<String>,
    },
    /// Asked for, but the kernel or this build cannot: why.
    Unavailable(String),
}

/// Why a leg's sockets could not be had.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// The interface has no media IP of the wanted family.
    #[error("interface {interface} has no {} media IP", if *.ipv6 { "IPv6" } else { "IPv4" })]
    NoMediaIp {
        /// The interface.
        interface: String,
        /// The family wanted.
        ipv6: bool,
    },
    /// No interface has this name.
    #[error("no interface is named {0}")]
    UnknownInterface(String),

    /// The pool ran out or could not bind.
    #[error(transparent)]
    Ports(PortError),
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
    /// Replaced by a reload, so that a restarted worker gets the new ones.
    timeouts: Mutex<Timeouts>,
    command_queue: usize,
    busy_poll: bool,
    user_fast_path: bool,
    /// Taken at shutdown, so that the event channel closes once the
    /// workers have ended and its reader sees the end.
    events: Mutex<Option<mpsc::Sender<WorkerEvent>>>,
    /// The DTLS thread's queue; taken at shutdown too, so the thread ends
    /// with the last worker.
    dtls: Mutex<Option<DtlsHandle>>,
    /// The kernel fast path, when on.
    kernel: Option<Arc<KernelPath>>,
}

/// The running data plane: port pools and worker threads.
pub struct Dataplane {
    /// One slot per worker; a failed worker's slot gets a new worker. The
    /// lock is taken per control command, never per packet.
    workers: Vec<Mutex<WorkerHandle>>,
    pools: Vec<(String, Arc<Mutex<PortPool>>)>,
    template: WorkerTemplate,
    identity: Arc<DtlsIdentity>,
    dtls_thread: Mutex<Option<JoinHandle<()>>>,
    kernel_status: KernelStatus,
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

/// Starts worker `index`. Its thread catches a panic (a bug) and reports it
/// as [`WorkerEvent::WorkerFailed`]: the worker's sessions are lost with it,
/// but the rest of the relay keeps forwarding.
fn spawn_worker(index: WorkerId, template: &WorkerTemplate) -> std::io::Result<WorkerHandle> {
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
    let dtls = template
        .dtls
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let worker = Worker::new(
        index,
        poll,
        receiver,
        events.clone(),
        *template
            .timeouts
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
        Arc::clone(&stop),
        (Arc::clone(&waker), dtls),
    )?
    .busy_poll(template.busy_poll)
    .lanes(template.user_fast_path)
    .kernel(match &template.kernel {
        // The worker's slots start empty: routes a failed worker left are
        // ended before its successor starts.
        Some(kernel) => match kernel.maps(index.0) {
            Ok(maps) => Some(maps),
            Err(e) => {
                tracing::warn!(worker = %index, "kernel fast path off for this worker: {e}");
                None
            }
        },
        None => None,
    });
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
            .enumerate()
            .map(|(i, &ip)| {
                let name = config
                    .interface_names
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| DEFAULT_INTERFACE.to_owned());
                (name, Arc::new(Mutex::new(PortPool::new(ip, lo, hi))))
            })
            .collect();
        let identity = match &config.dtls_identity {
            Some(identity) => Arc::clone(identity),
            None => Arc::new(DtlsIdentity::generate().map_err(std::io::Error::other)?),
        };
        let (dtls, dtls_thread) = dtls::spawn(Arc::clone(&identity), events.clone())?;
        let (kernel, kernel_status) = if config.kernel_forwarding {
            match KernelPath::load(
                &config.media_ips,
                KERNEL_ROUTES_PER_WORKER.saturating_mul(u32::try_from(config.workers).unwrap_or(1)),
                config.workers,
            ) {
                Ok(kernel) => {
                    let interfaces = kernel.interfaces().to_vec();
                    (Some(Arc::new(kernel)), KernelStatus::On { interfaces })
                }
                Err(e) => {
                    tracing::warn!("kernel forwarding unavailable, forwarding in user space: {e}");
                    (None, KernelStatus::Unavailable(e.to_string()))
                }
            }
        } else {
            (None, KernelStatus::Off)
        };
        let template = WorkerTemplate {
            timeouts: Mutex::new(config.timeouts),
            command_queue: config.command_queue,
            busy_poll: config.busy_poll,
            user_fast_path: config.user_fast_path,
            events: Mutex::new(Some(events)),
            dtls: Mutex::new(Some(dtls)),
            kernel,
        };
        let mut workers = Vec::with_capacity(config.workers);
        for index in 0..config.workers {
            workers.push(Mutex::new(spawn_worker(WorkerId(index), &template)?));
        }
        Ok(Self {
            workers,
            pools,
            template,
            identity,
            dtls_thread: Mutex::new(Some(dtls_thread)),
            kernel_status,
        })
    }

    /// Whether steady plain directions the kernel does not take go on
    /// lanes (the user-space fast path).
    pub fn user_fast_path(&self) -> bool {
        self.template.user_fast_path
    }

    /// Whether the kernel fast path is on, and if not, why.
    pub fn kernel_status(&self) -> &KernelStatus {
        &self.kernel_status
    }

    /// The kernel program's own counters, summed over CPUs (when on).
    pub fn kernel_counters(&self) -> Option<KernelCounters> {
        self.template.kernel.as_ref().map(|k| k.counters())
    }

    /// Starts a new worker in the slot of one that failed (after
    /// [`WorkerEvent::WorkerFailed`]); it begins with no sessions.
    pub fn restart_worker(&self, worker: WorkerId) -> std::io::Result<()> {
        let slot = self
            .workers
            .get(worker.0)
            .ok_or_else(|| std::io::Error::other(format!("no media worker {worker}")))?;
        let fresh = spawn_worker(worker, &self.template)?;
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

    /// Makes worker `worker` panic, as a bug would: for tests of what the
    /// relay does when a worker fails. Nothing in the relay calls it.
    #[doc(hidden)]
    pub fn fail_worker_for_tests(&self, worker: WorkerId) -> Result<(), DataplaneError> {
        self.queue(worker, Command::Fail)
    }

    /// Number of workers.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Every worker's id.
    pub fn workers(&self) -> impl Iterator<Item = WorkerId> {
        (0..self.workers.len()).map(WorkerId)
    }

    /// Queues a command for a worker and wakes it.
    fn queue(&self, worker: WorkerId, command: Command) -> Result<(), DataplaneError> {
        let handle = self
            .workers
            .get(worker.0)
            .ok_or(DataplaneError::Stopped(worker))?
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        handle.commands.try_send(command).map_err(|e| match e {
            TrySendError::Full(_) => DataplaneError::Busy(worker),
            TrySendError::Disconnected(_) => DataplaneError::Stopped(worker),
        })?;
        handle
            .waker
            .wake()
            .map_err(|_| DataplaneError::Stopped(worker))
    }

    /// Queues a command built around its reply channel and waits (bounded)
    /// for the answer.
    async fn ask<T>(
        &self,
        worker: WorkerId,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, DataplaneError> {
        let (reply, mut answer) = oneshot::channel();
        self.queue(worker, command(reply))?;
        match tokio::time::timeout(REPLY_TIMEOUT, &mut answer).await {
            Ok(Ok(value)) => Ok(value),
            // The worker dropped the reply: it failed while handling it.
            Ok(Err(_)) => Err(DataplaneError::Stopped(worker)),
            Err(_) => {
                // Closed before giving up: from here on the worker's answer
                // fails and it undoes the command itself; an answer that
                // arrived in between is still taken, so no outcome is lost.
                answer.close();
                answer
                    .try_recv()
                    .map_err(|_| DataplaneError::NoAnswer(worker))
            }
        }
    }

    /// Hands a new session's sockets to `worker`, which starts forwarding.
    /// If the worker does not answer in time, it removes the session itself
    /// when it finds nobody waiting for its answer, so a late add never
    /// leaves a session the control plane does not know (and a transfer
    /// opened late is rolled back the same way).
    pub async fn add_session(
        &self,
        worker: WorkerId,
        id: SessionId,
        streams: Vec<StreamSetup>,
    ) -> Result<(), DataplaneError> {
        self.ask(worker, |reply| Command::Add {
            id,
            streams,
            resume: None,
            reply,
        })
        .await?
    }

    /// Hands a session another relay process served to `worker`, which
    /// goes on from its snapshot (see [`Resume`]); the same rules as
    /// [`add_session`](Self::add_session) when the worker answers late.
    pub async fn resume_session(
        &self,
        worker: WorkerId,
        id: SessionId,
        streams: Vec<StreamSetup>,
        resume: Resume,
    ) -> Result<(), DataplaneError> {
        let resume = Some(Box::new(resume));
        self.ask(worker, |reply| Command::Add {
            id,
            streams,
            resume,
            reply,
        })
        .await?
    }

    /// Snapshots of `worker`'s sessions that took in packets since their
    /// last one (every session when `all`).
    pub async fn snapshots(
        &self,
        worker: WorkerId,
        all: bool,
    ) -> Result<Vec<(SessionId, SessionSnapshot)>, DataplaneError> {
        let mut all_pages = Vec::new();
        let mut from = 0;
        loop {
            let (page, next) = self
                .ask(worker, |reply| Command::Snapshots {
                    all,
                    from,
                    limit: SNAPSHOT_PAGE,
                    reply,
                })
                .await?;
            all_pages.extend(page);
            match next {
                Some(next) => from = next,
                None => return Ok(all_pages),
            }
        }
    }

    /// Applies a signalling update to a session.
    pub async fn update_session(
        &self,
        worker: WorkerId,
        id: SessionId,
        update: SessionUpdate,
    ) -> Result<(), DataplaneError> {
        self.ask(worker, |reply| Command::Update { id, update, reply })
            .await?
    }

    /// Opens a transfer's legs on the session.
    pub async fn begin_transfer(
        &self,
        worker: WorkerId,
        id: SessionId,
        setup: TransferSetup,
    ) -> Result<(), DataplaneError> {
        self.ask(worker, |reply| Command::BeginTransfer { id, setup, reply })
            .await?
    }

    /// Switches an open transfer now (commit mode).
    pub async fn commit_transfer(
        &self,
        worker: WorkerId,
        id: SessionId,
        transfer: TransferId,
    ) -> Result<(), DataplaneError> {
        self.ask(worker, |reply| Command::Commit {
            id,
            transfer,
            reply,
        })
        .await?
    }

    /// Rolls back an open transfer (`transfer`, or whichever is open);
    /// returns the id of the transfer rolled back.
    pub async fn cancel_transfer(
        &self,
        worker: WorkerId,
        id: SessionId,
        transfer: Option<TransferId>,
    ) -> Result<TransferId, DataplaneError> {
        self.ask(worker, |reply| Command::Cancel {
            id,
            transfer,
            reply,
        })
        .await?
    }

    /// Ends a session: its sockets close, its ports are free, and its final
    /// report comes back.
    pub async fn remove_session(
        &self,
        worker: WorkerId,
        id: SessionId,
    ) -> Result<SessionReport, DataplaneError> {
        self.ask(worker, |reply| Command::Remove { id, reply })
            .await?
    }

    /// A session's state now.
    pub async fn inspect_session(
        &self,
        worker: WorkerId,
        id: SessionId,
    ) -> Result<SessionReport, DataplaneError> {
        self.ask(worker, |reply| Command::Inspect { id, reply })
            .await?
    }

    /// A worker's counters.
    pub async fn worker_stats(&self, worker: WorkerId) -> Result<WorkerStats, DataplaneError> {
        self.ask(worker, |reply| Command::Stats { reply }).await
    }

    /// Replaces the session timeouts on every worker, for live sessions
    /// and new ones (a reload). A worker that does not take them is
    /// reported; the others have them.
    pub async fn set_timeouts(&self, timeouts: Timeouts) -> Result<(), DataplaneError> {
        *self
            .template
            .timeouts
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = timeouts;
        let mut result = Ok(());
        for worker in self.workers() {
            if let Err(e) = self
                .ask(worker, |reply| Command::SetTimeouts { timeouts, reply })
                .await
            {
                result = Err(e);
            }
        }
        result
    }

    /// The sessions a worker holds (to check the control plane's registry
    /// against).
    pub async fn worker_sessions(
        &self,
        worker: WorkerId,
    ) -> Result<Vec<SessionId>, DataplaneError> {
        self.ask(worker, |reply| Command::Sessions { reply }).await
    }

    /// The local media IPs, in configuration order.
    pub fn media_ips(&self) -> Vec<IpAddr> {
        self.pools
            .iter()
            .map(|(_, p)| p.lock().unwrap_or_else(PoisonError::into_inner).ip())
            .collect()
    }

    /// The interface names, in configuration order, each once.
    pub fn interface_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for (name, _) in &self.pools {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    }

    /// The interface a leg gets when none is named: `default` if there is
    /// one, else the first configured.
    pub fn default_interface(&self) -> String {
        let names = self.interface_names();
        if names.iter().any(|n| n == DEFAULT_INTERFACE) {
            DEFAULT_INTERFACE.to_owned()
        } else {
            names.into_iter().next().unwrap_or_default()
        }
    }

    /// Binds a leg's sockets on `interface` (the default one when `None`):
    /// on its media IP of the wanted family (IPv6 when `ipv6`), or on its
    /// first media IP when `ipv6` is `None`.
    pub fn allocate(
        &self,
        interface: Option<&str>,
        ipv6: Option<bool>,
        rtcp_mux: bool,
    ) -> Result<LegSockets, AllocError> {
        let default;
        let interface = match interface {
            Some(name) if !name.is_empty() => name,
            Some(_) | None => {
                default = self.default_interface();
                &default
            }
        };
        let pool = self.pool(interface, ipv6)?;
        ports::allocate(pool, rtcp_mux).map_err(AllocError::Ports)
    }

    /// Binds the pair at `port` on `interface`'s media IP of the family
    /// (IPv6 when `ipv6`) for a leg another relay process served (high
    /// availability): the parties keep sending there.
    pub fn allocate_at(
        &self,
        interface: &str,
        ipv6: bool,
        port: u16,
        rtcp_mux: bool,
    ) -> Result<LegSockets, AllocError> {
        let pool = self.pool(interface, Some(ipv6))?;
        ports::allocate_at(pool, port, rtcp_mux).map_err(AllocError::Ports)
    }

    /// The port pool of `interface`'s media IP of the family (IPv6 when
    /// `ipv6`; its first media IP when `None`).
    fn pool(
        &self,
        interface: &str,
        ipv6: Option<bool>,
    ) -> Result<&Arc<Mutex<PortPool>>, AllocError> {
        let mut named = self
            .pools
            .iter()
            .filter(|(name, _)| name == interface)
            .peekable();
        if named.peek().is_none() {
            return Err(AllocError::UnknownInterface(interface.to_owned()));
        }
        named
            .find(|(_, p)| {
                let ip = p.lock().unwrap_or_else(PoisonError::into_inner).ip();
                ipv6.is_none_or(|v6| ip.is_ipv6() == v6)
            })
            .map(|(_, pool)| pool)
            .ok_or_else(|| AllocError::NoMediaIp {
                interface: interface.to_owned(),
                ipv6: ipv6.unwrap_or(false),
            })
    }

    /// Per media IP: (interface, ip, free pairs, pairs in the range).
    pub fn port_usage(&self) -> Vec<(String, IpAddr, usize, usize)> {
        self.pools
            .iter()
            .map(|(name, p)| {
                let pool = p.lock().unwrap_or_else(PoisonError::into_inner);
                (name.clone(), pool.ip(), pool.free_pairs(), pool.capacity())
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
        self.template
            .dtls
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
        // Its queue closed with the last worker.
        let dtls = self
            .dtls_thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = dtls {
            let _ = thread.join();
        }
    }

    /// The fingerprint of the relay's DTLS certificate, for
    /// `a=fingerprint` toward WebRTC peers.
    pub fn dtls_fingerprint(&self) -> Fingerprint {
        self.identity.fingerprint()
    }
}
