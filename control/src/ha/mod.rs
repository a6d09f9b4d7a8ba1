//! High availability on Redis, as rtpengine's operators run it: the active
//! relay writes its calls to Redis; a standby with the same Redis and the
//! same media address (a floating IP that keepalived moves) takes the
//! calls over when the active's heartbeat key expires, or when told to
//! (`baton ctl takeover`); a relay restarted alone takes its own calls
//! back. What baton adds is that the remote hears one stream across the
//! failover: the stored state includes each stream's outward SSRC,
//! numbering and SRTP indexes (see `baton_relay::core::snapshot`).
//!
//! Keys, under a prefix shared by the relays of one pair (`baton` unless
//! set):
//! - `PREFIX:active`: the active relay's instance name, kept alive every
//!   heartbeat, expiring after the heartbeat timeout;
//! - `PREFIX:session:ID`: a session's signalling state (JSON), written on
//!   every change (create, update, transfer, delete);
//! - `PREFIX:media:ID`: its media snapshot (JSON), written every snapshot
//!   interval while its media flows;
//! - `PREFIX:binding:GRUU`: a device binding, expiring with it.
//!
//! Session keys expire `key-ttl` after their last write unless refreshed,
//! so the calls of a relay nobody takes over do not stay forever.
//!
//! Redis holds SRTP keys: give it the protection the relay's memory has
//! (ACLs, TLS, a private network).

pub mod store;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use baton_relay::SessionId;
use redis::aio::ConnectionManager;
use tokio::sync::{Notify, mpsc};
use tracing::{error, info, warn};

use crate::devices::Devices;
use crate::service::Service;
use crate::sessions::Sessions;
use crate::sessions::persist::{STORED_VERSION, StoredMedia, StoredSession};
use store::{StoreHandle, Write};

/// Settings of `--redis` and its companions.
#[derive(Debug, Clone)]
pub struct HaOptions {
    /// `redis://[USER:PASSWORD@]HOST[:PORT][/DB]`, or `rediss://` for TLS.
    pub url: String,
    /// CA certificate (PEM) to verify a TLS server with, instead of the
    /// system's.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// The prefix of every key: one per active/standby pair.
    pub key_prefix: String,
    /// This relay's name in the heartbeat key.
    pub instance: String,
    /// Start as the standby: take over only once the active is gone.
    pub standby: bool,
    /// How often the active refreshes its heartbeat (and the standby
    /// looks at it).
    pub heartbeat: Duration,
    /// How long the heartbeat key lives without a refresh: the longest a
    /// dead active goes unnoticed.
    pub heartbeat_timeout: Duration,
    /// How often flowing sessions' media snapshots are written.
    pub snapshot_interval: Duration,
    /// How long a session's keys live after their last write.
    pub key_ttl: Duration,
}

/// What the relay is in its pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Waiting for the active's heartbeat to expire.
    Standby = 0,
    /// Taking the stored calls over.
    TakingOver = 1,
    /// Serving calls and writing them to Redis.
    Active = 2,
    /// Another relay took the heartbeat key while this one served: it
    /// stops writing (the other's state wins) and says so.
    Fenced = 3,
}

impl Role {
    /// Lower-case name, for `stats` and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Standby => "standby",
            Self::TakingOver => "taking_over",
            Self::Active => "active",
            Self::Fenced => "fenced",
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Standby,
            1 => Self::TakingOver,
            3 => Self::Fenced,
            _ => Self::Active,
        }
    }
}

/// Takeovers and what they brought back.
#[derive(Debug, Default)]
pub struct HaCounters {
    /// Times this relay took the calls over (a start that found its own
    /// calls counts too).
    pub takeovers: AtomicU64,
    /// Sessions resumed from the store.
    pub resumed: AtomicU64,
    /// Stored sessions that could not be resumed (unreadable, ports taken).
    pub resume_failures: AtomicU64,
    /// Sessions the standby holds in memory, ready to take over.
    pub standby_sessions: AtomicU64,
    /// Milliseconds the last takeover took, from the decision to the last
    /// session forwarding.
    pub last_takeover_ms: AtomicU64,
    /// Times the heartbeat key was found held by another relay while this
    /// one was active.
    pub fenced: AtomicU64,
}

/// The relay's high availability: its role, the store writer and the
/// tasks that keep Redis in step with the calls.
pub struct Ha {
    options: HaOptions,
    service: Arc<Service>,
    connection: ConnectionManager,
    store: StoreHandle,
    role: AtomicU8,
    counters: HaCounters,
    /// Sessions changed since they were last written.
    changed: Mutex<Option<mpsc::Receiver<SessionId>>>,
    /// An operator's `takeover`.
    takeover: Notify,
    /// Set at shutdown: nothing more is written (the calls stay stored for
    /// whoever goes on with them).
    stopping: AtomicBool,
    /// The standby's copy of the stored calls.
    mirror: Mutex<HashMap<SessionId, (StoredSession, Option<StoredMedia>)>>,
    /// Sessions this process has written and not deleted.
    written: Mutex<HashSet<SessionId>>,
}

impl std::fmt::Debug for Ha {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ha")
            .field("instance", &self.options.instance)
            .field("role", &self.role())
            .finish_non_exhaustive()
    }
}

/// Largest stored value read back (a session with many SDP bodies is a
/// few tens of KiB): anything larger is not the relay's and is skipped.
const MAX_STORED_VALUE: usize = 1 << 20;
/// Keys read per SCAN step and per MGET.
const READ_CHUNK: usize = 256;
/// Changes coalesced before they are written.
const CHANGED_QUEUE: usize = 8192;

/// A Redis client for `options` (TLS set up when the URL says `rediss://`).
fn client(options: &HaOptions) -> anyhow::Result<redis::Client> {
    use anyhow::Context;
    if options.tls_ca.is_none() && options.tls_client.is_none() {
        return redis::Client::open(options.url.as_str())
            .with_context(|| format!("redis URL {}", redacted(&options.url)));
    }
    let read = |path: &PathBuf| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let certificates = redis::TlsCertificates {
        client_tls: match &options.tls_client {
            Some((cert, key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
            None => None,
        },
        root_cert: options.tls_ca.as_ref().map(read).transpose()?,
    };
    redis::Client::build_with_tls(options.url.as_str(), certificates)
        .with_context(|| format!("redis URL {} with TLS", redacted(&options.url)))
}

/// The URL without its password, for logs and errors.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// The heartbeat key as this relay holds it: its name, this relay's name
/// in it, and how long it lives without a refresh.
#[derive(Debug, Clone)]
struct Heartbeat {
    key: String,
    instance: String,
    timeout_ms: u64,
}

impl Heartbeat {
    /// Keeps the key alive if it is still this relay's: 1 if it was, 0 if
    /// not (expired or another relay's).
    async fn refresh(&self, connection: &mut ConnectionManager) -> redis::RedisResult<i64> {
        let script = redis::Script::new(
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end",
        );
        let mut invocation = script.key(&self.key);
        invocation.arg(&self.instance).arg(self.timeout_ms);
        within(COMMAND_TIMEOUT, invocation.invoke_async(connection)).await
    }

    /// Takes the key — only if nobody holds it, unless `whoever_holds_it`:
    /// `Some` once it is this relay's.
    async fn take(
        &self,
        connection: &mut ConnectionManager,
        whoever_holds_it: bool,
    ) -> redis::RedisResult<Option<String>> {
        let mut set = redis::cmd("SET");
        set.arg(&self.key)
            .arg(&self.instance)
            .arg("PX")
            .arg(self.timeout_ms);
        if !whoever_holds_it {
            set.arg("NX");
        }
        within(COMMAND_TIMEOUT, set.query_async(connection)).await
    }

    /// Gives the key up if it is this relay's: 1 if it was.
    async fn release(&self, connection: &mut ConnectionManager) -> redis::RedisResult<i64> {
        let script = redis::Script::new(
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end",
        );
        let mut invocation = script.key(&self.key);
        invocation.arg(&self.instance);
        within(COMMAND_TIMEOUT, invocation.invoke_async(connection)).await
    }
}

/// How long one Redis command may take before it counts as failed (the
/// connection retries by itself; the heartbeat must not wait on it).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// How long reading every stored call may take.
const READ_ALL_TIMEOUT: Duration = Duration::from_secs(10);

/// `operation`, failed if Redis does not answer within `limit`.
async fn within<T>(
    limit: Duration,
    operation: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    tokio::time::timeout(limit, operation)
        .await
        .unwrap_or_else(|_| Err((redis::ErrorKind::Io, "Redis did not answer in time").into()))
}

impl Ha {
    /// Connects (lazily: a Redis that is down at start is retried, the
    /// relay serves meanwhile) and returns the relay's HA, not started.
    pub fn new(options: HaOptions, service: Arc<Service>) -> anyhow::Result<Arc<Self>> {
        // rustls needs a process-wide crypto provider; a second install
        // (tests start several relays' worth in one process) is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = client(&options)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_max_delay(Duration::from_millis(500))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| anyhow::anyhow!("redis {}: {e}", redacted(&options.url)))?;
        let store = store::start(connection.clone());
        let (changed_tx, changed_rx) = mpsc::channel(CHANGED_QUEUE);
        let sessions = service.sessions();
        sessions.persist_to(crate::sessions::PersistHook::new(
            changed_tx,
            Arc::clone(store.counters()),
        ));
        sessions
            .devices()
            .persist_to(store.clone(), options.key_prefix.clone());
        // No new calls until this relay holds the heartbeat key.
        sessions.set_serving(false);
        Ok(Arc::new(Self {
            options,
            service,
            connection,
            store,
            role: AtomicU8::new(Role::Standby as u8),
            counters: HaCounters::default(),
            changed: Mutex::new(Some(changed_rx)),
            takeover: Notify::new(),
            stopping: AtomicBool::new(false),
            mirror: Mutex::new(HashMap::new()),
            written: Mutex::new(HashSet::new()),
        }))
    }

    fn sessions(&self) -> &Sessions {
        self.service.sessions()
    }

    fn devices(&self) -> &Devices {
        self.service.sessions().devices()
    }

    /// The relay's role now.
    pub fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::Relaxed))
    }

    fn set_role(&self, role: Role) {
        self.role.store(role as u8, Ordering::Relaxed);
        self.enable_writes(role == Role::Active);
    }

    /// Whether writes are queued at all: only by the active relay, not
    /// stopping, whose heartbeat is fresh.
    fn enable_writes(&self, on: bool) {
        let on = on && self.role() == Role::Active && !self.stopping.load(Ordering::Relaxed);
        self.store.counters().enabled.store(on, Ordering::Relaxed);
    }

    /// Whether this relay serves calls (not a standby waiting).
    pub fn serves(&self) -> bool {
        matches!(self.role(), Role::Active | Role::Fenced)
    }

    /// This relay's instance name.
    pub fn instance(&self) -> &str {
        &self.options.instance
    }

    /// The relay's part in its pair and what it wrote and took over, as
    /// `stats` and `/metrics` show them.
    pub fn stats(&self) -> baton_proto::v1::HighAvailability {
        let store = self.store.counters();
        let counters = &self.counters;
        baton_proto::v1::HighAvailability {
            instance: self.options.instance.clone(),
            role: self.role().name().to_owned(),
            redis_connected: store.connected.load(Ordering::Relaxed),
            redis_writes: store.written.load(Ordering::Relaxed),
            redis_write_drops: store.dropped.load(Ordering::Relaxed),
            redis_errors: store.errors.load(Ordering::Relaxed),
            takeovers: counters.takeovers.load(Ordering::Relaxed),
            sessions_resumed: counters.resumed.load(Ordering::Relaxed),
            resume_failures: counters.resume_failures.load(Ordering::Relaxed),
            standby_sessions: counters.standby_sessions.load(Ordering::Relaxed),
            last_takeover_ms: counters.last_takeover_ms.load(Ordering::Relaxed),
        }
    }

    /// An operator asks this standby to take over now, whatever the
    /// heartbeat says (the active is known to be gone, or being retired).
    pub fn request_takeover(&self) -> Result<(), String> {
        match self.role() {
            Role::Standby => {
                self.takeover.notify_one();
                Ok(())
            }
            role @ (Role::TakingOver | Role::Active | Role::Fenced) => {
                Err(format!("this relay is {} already", role.name()))
            }
        }
    }

    fn key(&self, what: &str) -> String {
        format!("{}:{what}", self.options.key_prefix)
    }

    fn session_key(&self, id: SessionId) -> String {
        self.key(&format!("session:{id}"))
    }

    fn media_key(&self, id: SessionId) -> String {
        self.key(&format!("media:{id}"))
    }

    fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            key: self.key("active"),
            instance: self.options.instance.clone(),
            timeout_ms: u64::try_from(self.options.heartbeat_timeout.as_millis())
                .unwrap_or(u64::MAX),
        }
    }

    /// Starts the tasks: the heartbeat (and takeover), the writers of
    /// changed sessions and media snapshots, and the standby's mirror.
    pub fn start(self: &Arc<Self>) {
        let changed = self
            .changed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(changed) = changed {
            tokio::spawn(Arc::clone(self).write_changed(changed));
        }
        tokio::spawn(Arc::clone(self).write_media());
        tokio::spawn(Arc::clone(self).lead());
    }

    /// At shutdown: writes nothing more, and gives the heartbeat key up so
    /// that whoever goes on with the calls need not wait for it to expire.
    pub async fn stop(&self) {
        // What the calls' last commands changed goes out first.
        let deadline = Instant::now() + Duration::from_secs(1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        while !(self.store.is_idle() && self.sessions().persist_idle()) && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.stopping.store(true, Ordering::Relaxed);
        self.enable_writes(false);
        if self.serves() {
            let released = self.heartbeat().release(&mut self.connection.clone()).await;
            if matches!(released, Ok(1)) {
                info!("heartbeat key released: the calls stay in Redis for the next relay");
            }
        }
    }

    /// The heartbeat: acquire, keep, or wait for the active key; take the
    /// calls over when it becomes this relay's.
    async fn lead(self: Arc<Self>) {
        let heartbeat = self.heartbeat();
        let started = Instant::now();
        let mut last_refreshed: Option<Instant> = None;
        let mut forced = false;
        let mut waiting_logged = false;
        loop {
            if self.stopping.load(Ordering::Relaxed) {
                return;
            }
            let mut connection = self.connection.clone();
            match self.role() {
                Role::Standby => {
                    // A standby leaves a free key to the active for one
                    // timeout after it starts (both may start together).
                    let patient =
                        self.options.standby && started.elapsed() < self.options.heartbeat_timeout;
                    let holder: Result<Option<String>, _> = within(
                        COMMAND_TIMEOUT,
                        redis::cmd("GET")
                            .arg(&heartbeat.key)
                            .query_async(&mut connection),
                    )
                    .await;
                    let take = match &holder {
                        Ok(Some(holder)) if *holder == self.options.instance => true,
                        Ok(Some(holder)) => {
                            if !waiting_logged && !forced {
                                info!(active = %holder, "standby: {holder} is active");
                                waiting_logged = true;
                            }
                            forced
                        }
                        Ok(None) => !patient || forced,
                        Err(e) if !self.options.standby || forced => {
                            // The active of its pair serves whatever Redis
                            // does, and so does a standby an operator told to
                            // take over (Redis may have died with the active's
                            // host): from its copy of the calls. The key is
                            // taken once Redis answers.
                            warn!(
                                "Redis does not answer ({e}): serving without it; the calls are written once it does"
                            );
                            self.take_over(forced).await;
                            forced = false;
                            // Nothing is written before the key is this
                            // relay's (another may take it first).
                            self.enable_writes(false);
                            continue;
                        }
                        Err(_) => false,
                    };
                    if take {
                        let ours = matches!(&holder, Ok(Some(h)) if *h == self.options.instance);
                        let acquired = heartbeat.take(&mut connection, forced || ours).await;
                        if matches!(acquired, Ok(Some(_))) {
                            last_refreshed = Some(Instant::now());
                            self.take_over(forced).await;
                            forced = false;
                            continue;
                        }
                    }
                    tokio::select! {
                        () = tokio::time::sleep(self.options.heartbeat) => {}
                        () = self.takeover.notified() => {
                            info!("takeover asked by the operator");
                            forced = true;
                        }
                    }
                }
                Role::TakingOver => tokio::time::sleep(self.options.heartbeat).await,
                Role::Fenced => {
                    // Another relay holds the key: this one never takes it
                    // back by itself (its calls may be that relay's now);
                    // an operator restarts it.
                    tokio::time::sleep(self.options.heartbeat).await;
                    continue;
                }
                Role::Active => {
                    match heartbeat.refresh(&mut connection).await {
                        Ok(1) => {
                            last_refreshed = Some(Instant::now());
                            if !self.store.counters().enabled.load(Ordering::Relaxed) {
                                info!("the heartbeat key is this relay's: writing to Redis again");
                                self.enable_writes(true);
                                self.store.counters().resync.store(true, Ordering::Relaxed);
                            }
                        }
                        Ok(_) => {
                            // Expired (Redis restarted, or was out of
                            // reach) or taken by another relay.
                            match heartbeat.take(&mut connection, false).await {
                                Ok(Some(_)) => {
                                    // Nobody took over: this relay's again,
                                    // and everything written again.
                                    last_refreshed = Some(Instant::now());
                                    self.enable_writes(true);
                                    self.store.counters().resync.store(true, Ordering::Relaxed);
                                }
                                Ok(None) => {
                                    self.counters.fenced.fetch_add(1, Ordering::Relaxed);
                                    error!(
                                        "another relay holds the heartbeat key: this one stops writing to Redis and takes no new call (its calls go on until the floating address moves)"
                                    );
                                    self.set_role(Role::Fenced);
                                    self.sessions().set_serving(false);
                                }
                                Err(e) => warn!("heartbeat key not taken back: {e}"),
                            }
                        }
                        Err(e) => {
                            // Past the timeout the key may have expired and
                            // a standby taken over: no write may land after
                            // its own.
                            let lapsed = last_refreshed
                                .is_none_or(|at| at.elapsed() >= self.options.heartbeat_timeout);
                            if lapsed && self.store.counters().enabled.load(Ordering::Relaxed) {
                                warn!(
                                    "heartbeat not refreshed for the heartbeat timeout ({e}): no more writes to Redis until it is"
                                );
                                self.enable_writes(false);
                            }
                        }
                    }
                    tokio::time::sleep(self.options.heartbeat).await;
                }
            }
        }
    }

    /// Takes the stored calls over: reads them (or uses the mirror if
    /// Redis does not answer), resumes each on its ports, and serves.
    async fn take_over(&self, forced: bool) {
        let began = Instant::now();
        self.set_role(Role::TakingOver);
        info!(forced, "taking over the stored calls");
        // Thousands of calls take longer than a heartbeat timeout: the key
        // is kept alive meanwhile, or the peer would take over too.
        let keepalive = {
            let (mut connection, heartbeat) = (self.connection.clone(), self.heartbeat());
            let every = self.options.heartbeat;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let _ = heartbeat.refresh(&mut connection).await;
                }
            })
        };
        let stored = match within(READ_ALL_TIMEOUT, self.read_all(true)).await {
            Ok(stored) => stored,
            Err(e) => {
                warn!(
                    "Redis did not answer the takeover's read ({e}): going on from the copy in memory"
                );
                self.mirror
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .values()
                    .cloned()
                    .collect()
            }
        };
        let now_ms = crate::events::unix_time_ms();
        let total = stored.len();
        let mut resumed = 0usize;
        for (session, media) in stored {
            let id = session.id;
            let media = media.map(|m| {
                // Two hosts' clocks: never less than the snapshot interval
                // and the heartbeat timeout, whatever they say.
                let since = Duration::from_millis(now_ms.saturating_sub(m.taken_unix_ms))
                    .max(self.options.snapshot_interval + self.options.heartbeat_timeout);
                (m.snapshot, since)
            });
            match self.sessions().resume_stored(session, media).await {
                Ok(()) => {
                    resumed += 1;
                    self.counters.resumed.fetch_add(1, Ordering::Relaxed);
                }
                Err(status) => {
                    self.counters
                        .resume_failures
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(session = %id, "stored session not resumed: {}", status.message);
                }
            }
        }
        if let Err(e) = within(READ_ALL_TIMEOUT, self.read_bindings()).await {
            warn!("device bindings not read back: {e}");
        }
        self.mirror
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.counters.standby_sessions.store(0, Ordering::Relaxed);
        let took = began.elapsed();
        self.counters.last_takeover_ms.store(
            u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if total > 0 || forced {
            self.counters.takeovers.fetch_add(1, Ordering::Relaxed);
        }
        // Whatever was resumed is this relay's now: written as it is.
        self.store.counters().resync.store(true, Ordering::Relaxed);
        keepalive.abort();
        self.set_role(Role::Active);
        self.sessions().set_serving(true);
        info!(
            resumed,
            failed = total - resumed,
            took_ms = took.as_millis(),
            "active: the stored calls are taken over"
        );
    }

    /// Every stored session with its media snapshot.
    /// What cannot be read is counted when `count` (a takeover; the
    /// standby's refreshes of its copy would count the same junk again and
    /// again).
    async fn read_all(
        &self,
        count: bool,
    ) -> redis::RedisResult<Vec<(StoredSession, Option<StoredMedia>)>> {
        let mut keys = self.scan(&self.key("session:*")).await?;
        let limit = self.sessions().options().max_sessions;
        if keys.len() > limit {
            warn!(
                stored = keys.len(),
                limit, "more stored sessions than max-sessions: the rest are not read"
            );
            self.counters.resume_failures.fetch_add(
                u64::try_from(keys.len() - limit).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            keys.truncate(limit);
        }
        let mut connection = self.connection.clone();
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(READ_CHUNK) {
            let chunk = self.within_size(&mut connection, chunk, count).await?;
            let sessions: Vec<Option<Vec<u8>>> = if chunk.is_empty() {
                Vec::new()
            } else {
                redis::cmd("MGET")
                    .arg(&chunk)
                    .query_async(&mut connection)
                    .await?
            };
            let ids: Vec<Option<StoredSession>> = sessions
                .into_iter()
                .map(|value| self.parse::<StoredSession>(value?, count))
                .collect();
            let media_keys: Vec<String> = ids
                .iter()
                .map(|s| {
                    s.as_ref()
                        .map_or_else(|| self.key("media:none"), |s| self.media_key(s.id))
                })
                .collect();
            let media: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(&media_keys)
                .query_async(&mut connection)
                .await?;
            for ((session, media), key) in ids.into_iter().zip(media).zip(&chunk) {
                let Some(session) = session else { continue };
                if *key != self.session_key(session.id) {
                    // A value copied under another session's key.
                    if count {
                        self.counters
                            .resume_failures
                            .fetch_add(1, Ordering::Relaxed);
                        warn!(%key, id = %session.id, "stored session under another id's key: skipped");
                    }
                    continue;
                }
                let media = media
                    .and_then(|m| self.parse::<StoredMedia>(m, count))
                    .filter(|m| m.version == STORED_VERSION);
                out.push((session, media));
            }
        }
        Ok(out)
    }

    /// The keys of `keys` whose values are small enough to read (their
    /// sizes asked first, so a huge value is never fetched).
    async fn within_size(
        &self,
        connection: &mut ConnectionManager,
        keys: &[String],
        count: bool,
    ) -> redis::RedisResult<Vec<String>> {
        let mut sizes = redis::pipe();
        for key in keys {
            sizes.cmd("STRLEN").arg(key);
        }
        let sizes: Vec<usize> = sizes.query_async(connection).await?;
        let mut kept = Vec::with_capacity(keys.len());
        for (key, size) in keys.iter().zip(sizes) {
            if size > MAX_STORED_VALUE {
                if count {
                    self.counters
                        .resume_failures
                        .fetch_add(1, Ordering::Relaxed);
                }
                warn!(%key, bytes = size, "stored value too large: skipped");
            } else {
                kept.push(key.clone());
            }
        }
        Ok(kept)
    }

    /// Reads one stored value; what is unreadable is counted when `count`.
    fn parse<T: serde::de::DeserializeOwned>(&self, value: Vec<u8>, count: bool) -> Option<T> {
        let parsed = if value.len() > MAX_STORED_VALUE {
            Err(format!("{} bytes", value.len()))
        } else {
            serde_json::from_slice(&value).map_err(|e| e.to_string())
        };
        match parsed {
            Ok(parsed) => Some(parsed),
            Err(e) => {
                if count {
                    self.counters
                        .resume_failures
                        .fetch_add(1, Ordering::Relaxed);
                    warn!("stored value unreadable: {e}");
                }
                None
            }
        }
    }

    /// The keys matching `pattern`.
    async fn scan(&self, pattern: &str) -> redis::RedisResult<Vec<String>> {
        let mut connection = self.connection.clone();
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(READ_CHUNK)
                .query_async(&mut connection)
                .await?;
            keys.extend(found);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    /// Registers the stored device bindings again.
    async fn read_bindings(&self) -> redis::RedisResult<()> {
        let keys = self.scan(&self.key("binding:*")).await?;
        let mut connection = self.connection.clone();
        for chunk in keys.chunks(READ_CHUNK) {
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(chunk)
                .query_async(&mut connection)
                .await?;
            for value in values.into_iter().flatten() {
                if let Some(binding) = self.parse::<crate::devices::StoredBinding>(value, true)
                    && let Err(status) = self.devices().restore(&binding)
                {
                    warn!("stored binding not restored: {}", status.message);
                }
            }
        }
        Ok(())
    }

    /// Writes each changed session (or deletes it once it has ended).
    async fn write_changed(self: Arc<Self>, mut changed: mpsc::Receiver<SessionId>) {
        let mut ids = Vec::with_capacity(256);
        while changed.recv_many(&mut ids, 256).await > 0 {
            if self.writes() {
                ids.sort_unstable();
                ids.dedup();
                for &id in &ids {
                    self.write_session(id).await;
                }
            }
            ids.clear();
        }
    }

    /// Whether this relay writes now.
    fn writes(&self) -> bool {
        self.role() == Role::Active && !self.stopping.load(Ordering::Relaxed)
    }

    /// Writes session `id` as it is, or deletes it once it has ended.
    async fn write_session(&self, id: SessionId) {
        match self.sessions().stored_session(id) {
            Some(value) => {
                self.written
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(id);
                self.store
                    .queue_waiting(Write::Set {
                        key: self.session_key(id),
                        value,
                        ttl: self.options.key_ttl,
                    })
                    .await;
            }
            None => {
                self.written
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id);
                for key in [self.session_key(id), self.media_key(id)] {
                    self.store.queue_waiting(Write::Del { key }).await;
                }
            }
        }
    }

    /// Every snapshot interval: the media snapshots of sessions whose
    /// media moved, a full re-sync when something was lost, the keys of
    /// quiet sessions kept alive; the standby refreshes its mirror.
    async fn write_media(self: Arc<Self>) {
        let mut interval = tokio::time::interval(self.options.snapshot_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_refresh = Instant::now();
        // The standby's copy: read whole, so not at every snapshot.
        let mirror_every = (self.options.snapshot_interval * 2).max(Duration::from_secs(2));
        let mut mirrored: Option<Instant> = None;
        loop {
            interval.tick().await;
            if self.stopping.load(Ordering::Relaxed) {
                return;
            }
            match self.role() {
                Role::Standby => {
                    if mirrored.is_none_or(|at| at.elapsed() >= mirror_every) {
                        mirrored = Some(Instant::now());
                        self.refresh_mirror().await;
                    }
                    continue;
                }
                Role::TakingOver | Role::Fenced => continue,
                Role::Active => {}
            }
            let resync = self.store.counters().resync.swap(false, Ordering::Relaxed);
            if resync {
                self.resync().await;
            }
            let taken_unix_ms = crate::events::unix_time_ms();
            for (id, snapshot) in self.sessions().media_snapshots(resync).await {
                let stored = StoredMedia {
                    version: STORED_VERSION,
                    taken_unix_ms,
                    snapshot,
                };
                if let Ok(value) = serde_json::to_string(&stored) {
                    let media = Write::Set {
                        key: self.media_key(id),
                        value,
                        ttl: self.options.key_ttl,
                    };
                    self.store.queue_waiting(media).await;
                    let refresh = Write::Expire {
                        key: self.session_key(id),
                        ttl: self.options.key_ttl,
                    };
                    self.store.queue_waiting(refresh).await;
                }
            }
            // Held calls send nothing: their keys are kept alive anyway.
            if last_refresh.elapsed() >= self.options.key_ttl / 4 {
                last_refresh = Instant::now();
                for id in self.sessions().live_ids() {
                    for key in [self.session_key(id), self.media_key(id)] {
                        let refresh = Write::Expire {
                            key,
                            ttl: self.options.key_ttl,
                        };
                        self.store.queue_waiting(refresh).await;
                    }
                }
            }
        }
    }

    /// Writes every live session again, and deletes those this process
    /// wrote that ended while writes were lost (never another relay's).
    async fn resync(&self) {
        let live = self.sessions().live_ids();
        info!(sessions = live.len(), "Redis: writing every session again");
        for &id in &live {
            self.write_session(id).await;
        }
        let live: HashSet<SessionId> = live.into_iter().collect();
        let ended: Vec<SessionId> = self
            .written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|id| !live.contains(id))
            .copied()
            .collect();
        for id in ended {
            self.write_session(id).await;
        }
        for write in self.devices().stored_all() {
            self.store.queue_waiting(write).await;
        }
    }

    /// The standby's copy of the stored calls, read again.
    async fn refresh_mirror(&self) {
        match within(READ_ALL_TIMEOUT, self.read_all(false)).await {
            Ok(stored) => {
                let count = stored.len();
                let mut mirror = self.mirror.lock().unwrap_or_else(PoisonError::into_inner);
                mirror.clear();
                for (session, media) in stored {
                    mirror.insert(session.id, (session, media));
                }
                self.counters
                    .standby_sessions
                    .store(u64::try_from(count).unwrap_or(u64::MAX), Ordering::Relaxed);
            }
            Err(e) => warn!("standby: the stored calls are not readable now: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_logged_without_their_password() {
        assert_eq!(
            redacted("redis://baton:s3cret@10.0.0.5:6379/2"),
            "redis://baton:***@10.0.0.5:6379/2"
        );
        assert_eq!(redacted("rediss://:pw@host"), "rediss://:***@host");
        assert_eq!(redacted("redis://127.0.0.1"), "redis://127.0.0.1");
    }

    #[test]
    fn roles_round_trip_through_their_number() {
        for role in [Role::Standby, Role::TakingOver, Role::Active, Role::Fenced] {
            assert_eq!(Role::from_u8(role as u8), role);
        }
    }
}
