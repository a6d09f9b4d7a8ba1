//! ng listeners: UDP (what Kamailio and OpenSIPS use) and TCP.
//!
//! The ng protocol has no authentication, so the listeners protect
//! themselves: requests only from the allowed client networks (loopback
//! unless configured), a reply cache bounded in entries and bytes, replies
//! bounded in size, refusals logged at a bounded rate with short excerpts.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::cache::{CookieCache, Seen};
use super::commands::NgService;
use super::wire;
use crate::status::excerpt;

/// The largest UDP payload (IPv4, 65535 minus IP and UDP headers); a reply
/// that does not fit is replaced by an error, never cut.
pub const MAX_DATAGRAM: usize = 65_507;
/// Requests executed at once per listener; more wait.
const MAX_CONCURRENT: usize = 256;
/// Largest request accepted on a TCP connection.
const MAX_TCP_MESSAGE: usize = 1 << 20;
/// A TCP client silent this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(300);
/// TCP clients at once per listener (a proxy keeps a handful); more are
/// closed at once.
const MAX_TCP_CLIENTS: usize = 256;
/// Largest reply sent over TCP; a larger one becomes an error.
pub const MAX_TCP_REPLY: usize = 1 << 20;
/// Bytes of a partial TCP message scanned, over all its reads, before the
/// client is dropped: a message dribbled in tiny pieces would otherwise be
/// rescanned from its start on every read (a quadratic cost). A proxy
/// writes a message in one go and is scanned a few times at most.
const TCP_SCAN_BUDGET: usize = 32 * MAX_TCP_MESSAGE;
/// Refusals logged per second; the rest are counted and summed up later.
const REFUSAL_LOGS_PER_SECOND: u32 = 10;

/// Which clients may send ng requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NgAccess {
    allow: Vec<IpNet>,
}

impl Default for NgAccess {
    /// Loopback only.
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl NgAccess {
    /// Clients from `allow`; loopback when it is empty.
    pub fn new(allow: Vec<IpNet>) -> Self {
        let allow = if allow.is_empty() {
            vec![
                loopback_v4(),
                IpNet::from(IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
            ]
        } else {
            allow
        };
        Self { allow }
    }

    /// Whether a request from `ip` is served.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow.iter().any(|net| net.contains(&ip))
    }
}

fn loopback_v4() -> IpNet {
    // 127.0.0.0/8: a constant network, so the prefix is always valid.
    IpNet::V4(ipnet::Ipv4Net::new_assert(
        std::net::Ipv4Addr::new(127, 0, 0, 0),
        8,
    ))
}

/// Logs refused requests at most [`REFUSAL_LOGS_PER_SECOND`] a second, so a
/// flood of bad requests cannot fill the disk; what was not logged is
/// counted in the next line.
#[derive(Debug)]
struct RefusalLog {
    window: Instant,
    logged: u32,
    suppressed: u64,
}

impl RefusalLog {
    fn new() -> Self {
        Self {
            window: Instant::now(),
            logged: 0,
            suppressed: 0,
        }
    }

    /// Whether to log now; returns the number not logged since the last
    /// line when it does.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.logged = 0;
        }
        if self.logged >= REFUSAL_LOGS_PER_SECOND {
            self.suppressed += 1;
            return None;
        }
        self.logged += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// What the listeners of one relay share.
#[derive(Debug)]
struct Shared {
    service: NgService,
    cache: Mutex<CookieCache>,
    /// Replaced by a reload (SIGHUP); read once per request.
    access: std::sync::RwLock<NgAccess>,
    refusals: Mutex<RefusalLog>,
}

impl Shared {
    /// Whether a refusal may be logged now; `Some(refusals not logged
    /// since the last line)` when it may.
    fn refusal_line(&self) -> Option<u64> {
        self.refusals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(Instant::now())
    }

    fn log_refusal(&self, from: SocketAddr, command: &str, call_id: &str, reason: &str) {
        if let Some(not_logged) = self.refusal_line() {
            info!(
                %from,
                command = %excerpt(command),
                call_id = %excerpt(call_id),
                reason = %excerpt_long(reason),
                not_logged,
                "ng request refused"
            );
        }
    }

    /// Whether `from` may talk to the relay; counts and drops it if not.
    fn admits(&self, from: SocketAddr) -> bool {
        if self
            .access
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .allows(from.ip())
        {
            return true;
        }
        self.service.telemetry().refused("ng_source_not_allowed");
        if let Some(not_logged) = self.refusal_line() {
            warn!(%from, not_logged, "ng: request from a source outside ng-allow dropped");
        }
        false
    }
}

/// A log excerpt of a refusal reason: longer than an input excerpt, still
/// bounded.
fn excerpt_long(text: &str) -> String {
    crate::status::bounded(text.chars().take(160).collect())
}

/// Where an ng listener listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NgAddr {
    /// `udp:HOST:PORT`.
    Udp(SocketAddr),
    /// `tcp:HOST:PORT`.
    Tcp(SocketAddr),
}

impl std::str::FromStr for NgAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // rtpengine's `listen-ng` is UDP and written without a scheme:
        // IP:PORT means the same here.
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Self::Udp(addr));
        }
        if let Ok(port) = text.parse::<u16>() {
            return Err(format!(
                "ng address {text:?}: give the address too, e.g. udp:127.0.0.1:{port} \
                 (ng has no authentication: listen on loopback or a private address)"
            ));
        }
        let (kind, addr) = text.split_once(':').ok_or_else(|| {
            format!("ng address {text:?}: expected udp:HOST:PORT, tcp:HOST:PORT or IP:PORT (UDP)")
        })?;
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| format!("ng address {text:?}: {addr:?} is not IP:PORT"))?;
        match kind {
            "udp" => Ok(Self::Udp(addr)),
            "tcp" => Ok(Self::Tcp(addr)),
            other => Err(format!("ng address {text:?}: {other:?} is not udp or tcp")),
        }
    }
}

impl std::fmt::Display for NgAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Udp(a) => write!(f, "udp:{a}"),
            Self::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// Runs one request: decode, execute (once per cookie), encode.
async fn respond(
    shared: &Shared,
    from: SocketAddr,
    message: &[u8],
    limit: usize,
) -> Option<Vec<u8>> {
    let (cookie, body) = match wire::split(message) {
        Ok(parts) => parts,
        Err(reason) => {
            shared.service.telemetry().refused("ng_malformed");
            debug!(%from, reason, "ng: message without a cookie dropped");
            return None;
        }
    };
    let seen = {
        let mut cache = shared.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let seen = cache.begin(Instant::now(), from, cookie);
        count_evicted(shared, &mut cache);
        seen
    };
    match seen {
        Seen::Done(reply) => {
            debug!(%from, cookie, "ng: retransmission answered from the cache");
            return Some(reply);
        }
        Seen::InProgress => {
            debug!(%from, cookie, "ng: retransmission of a request still running");
            return None;
        }
        Seen::New => {}
    }
    let reply = match wire::decode(body) {
        Ok(request) => {
            let reply = shared.service.handle(&request).await;
            if let serde_bencode::value::Value::Dict(fields) = &reply
                && wire::get_str(fields, "result") == Some("error")
            {
                shared.log_refusal(
                    from,
                    wire::get_str(&request, "command").unwrap_or("?"),
                    wire::get_str(&request, "call-id").unwrap_or(""),
                    wire::get_str(fields, "error-reason").unwrap_or(""),
                );
            }
            reply
        }
        Err(reason) => {
            shared.service.telemetry().refused("ng_malformed");
            shared.log_refusal(from, "?", "", &reason);
            wire::error(format!("malformed message: {reason}"))
        }
    };
    let encoded = wire::encode(cookie, &reply);
    if encoded.len() > limit {
        shared.service.telemetry().refused("ng_reply_too_large");
    }
    let bytes = fit(cookie, encoded, limit);
    let mut cache = shared.cache.lock().unwrap_or_else(PoisonError::into_inner);
    cache.finish(from, cookie, &bytes);
    count_evicted(shared, &mut cache);
    Some(bytes)
}

fn count_evicted(shared: &Shared, cache: &mut CookieCache) {
    let evicted = cache.take_evicted();
    if evicted > 0 {
        shared
            .service
            .telemetry()
            .refusals
            .get_or_create(&crate::telemetry::ReasonLabels {
                reason: "ng_cache_evicted".to_owned(),
            })
            .inc_by(evicted);
    }
}

/// `reply`, or an error in its place if it is longer than `limit`: a
/// datagram cut short would be garbage to the proxy.
fn fit(cookie: &str, reply: Vec<u8>, limit: usize) -> Vec<u8> {
    if reply.len() <= limit {
        return reply;
    }
    warn!(
        cookie = %excerpt(cookie),
        bytes = reply.len(),
        limit,
        "ng: reply too large; sent an error instead"
    );
    wire::encode(
        cookie,
        &wire::error(format!(
            "the reply ({} bytes) is larger than {limit} bytes; query by tag{}",
            reply.len(),
            if limit == MAX_DATAGRAM {
                ", or use ng over TCP"
            } else {
                ""
            }
        )),
    )
}

/// The ng listeners of one relay: they share the reply cache (a proxy may
/// retransmit to another listener) and the access list.
#[derive(Debug, Clone)]
pub struct NgListeners {
    shared: Arc<Shared>,
}

impl NgListeners {
    /// Listeners for `service`, serving only clients `access` allows.
    pub fn new(service: NgService, access: NgAccess) -> Self {
        Self {
            shared: Arc::new(Shared {
                service,
                cache: Mutex::new(CookieCache::default()),
                access: std::sync::RwLock::new(access),
                refusals: Mutex::new(RefusalLog::new()),
            }),
        }
    }

    /// Replaces who may send requests (a reload), from the next request on.
    pub fn set_access(&self, access: NgAccess) {
        *self
            .shared
            .access
            .write()
            .unwrap_or_else(PoisonError::into_inner) = access;
    }

    /// Serves ng on `addr` until the process ends; returns the bound
    /// address.
    pub async fn serve(&self, addr: NgAddr) -> std::io::Result<SocketAddr> {
        let shared = Arc::clone(&self.shared);
        match addr {
            NgAddr::Udp(addr) => {
                let socket = Arc::new(UdpSocket::bind(addr).await?);
                let local = socket.local_addr()?;
                info!(listen = %NgAddr::Udp(local), "ng listener ready");
                tokio::spawn(serve_udp(socket, shared));
                Ok(local)
            }
            NgAddr::Tcp(addr) => {
                let listener = TcpListener::bind(addr).await?;
                let local = listener.local_addr()?;
                info!(listen = %NgAddr::Tcp(local), "ng listener ready");
                tokio::spawn(serve_tcp(listener, shared));
                Ok(local)
            }
        }
    }
}

/// Serves ng on `addr` for loopback clients until the process ends.
pub async fn serve(addr: NgAddr, service: NgService) -> std::io::Result<SocketAddr> {
    NgListeners::new(service, NgAccess::default())
        .serve(addr)
        .await
}

async fn serve_udp(socket: Arc<UdpSocket>, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT));
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                // ICMP errors from earlier replies surface here; go on.
                debug!(error = %e, "ng: receive error");
                continue;
            }
        };
        if !shared.admits(from) {
            continue;
        }
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let message = buf[..len].to_vec();
        let (socket, shared) = (Arc::clone(&socket), Arc::clone(&shared));
        tokio::spawn(async move {
            if let Some(reply) = respond(&shared, from, &message, MAX_DATAGRAM).await
                && let Err(e) = socket.send_to(&reply, from).await
            {
                debug!(%from, error = %e, "ng: reply not sent");
            }
            drop(slot);
        });
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    let clients = Arc::new(Semaphore::new(MAX_TCP_CLIENTS));
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                if !shared.admits(from) {
                    drop(stream);
                    continue;
                }
                let Ok(slot) = Arc::clone(&clients).try_acquire_owned() else {
                    warn!(%from, limit = MAX_TCP_CLIENTS, "ng: TCP client refused: limit reached");
                    drop(stream);
                    continue;
                };
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    if let Err(reason) = serve_connection(stream, from, &shared).await {
                        debug!(%from, reason, "ng: TCP connection closed");
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                warn!(error = %e, "ng: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One TCP client: messages back to back, each `<cookie> <bencode>` (the
/// bencoded dictionary delimits itself), answered in order.
async fn serve_connection(
    mut stream: TcpStream,
    from: SocketAddr,
    shared: &Shared,
) -> Result<(), String> {
    let mut buffer: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    // Bytes scanned for the message at the front of the buffer so far.
    let mut scanned = 0usize;
    loop {
        // Take every complete message in the buffer.
        loop {
            let start = buffer
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(buffer.len());
            buffer.drain(..start);
            let cookie_end = buffer
                .iter()
                .take(wire::MAX_COOKIE + 1)
                .position(|&b| b == b' ');
            let Some(space) = cookie_end else {
                if buffer.len() > wire::MAX_COOKIE {
                    shared.service.telemetry().refused("ng_malformed");
                    return Err("no cookie".to_owned());
                }
                break;
            };
            scanned += buffer.len();
            if scanned > TCP_SCAN_BUDGET {
                shared.service.telemetry().refused("ng_malformed");
                return Err("message sent in too many pieces".to_owned());
            }
            let end = match wire::extent(&buffer[space + 1..]) {
                Ok(Some(len)) => space + 1 + len,
                Ok(None) => break,
                Err(reason) => {
                    shared.service.telemetry().refused("ng_malformed");
                    let cookie = String::from_utf8_lossy(&buffer[..space]).into_owned();
                    let reply = wire::encode(
                        &cookie,
                        &wire::error(format!("malformed message: {reason}")),
                    );
                    let _ = stream.write_all(&reply).await;
                    return Err(reason);
                }
            };
            let message: Vec<u8> = buffer.drain(..end).collect();
            scanned = 0;
            if let Some(reply) = respond(shared, from, &message, MAX_TCP_REPLY).await {
                stream.write_all(&reply).await.map_err(|e| e.to_string())?;
            }
        }
        if buffer.len() > MAX_TCP_MESSAGE {
            return Err("message too large".to_owned());
        }
        let read = tokio::time::timeout(TCP_IDLE, stream.read(&mut chunk))
            .await
            .map_err(|_| "idle".to_owned())?
            .map_err(|e| e.to_string())?;
        if read == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_too_large_for_a_datagram_becomes_an_error() {
        let big = wire::encode("c", &wire::dict([("sdp", wire::text("x".repeat(70_000)))]));
        let reply = fit("c", big, MAX_DATAGRAM);
        assert!(reply.len() < 200);
        let (cookie, body) = wire::split(&reply).expect("split");
        let dict = wire::decode(body).expect("decode");
        assert_eq!(cookie, "c");
        assert_eq!(wire::get_str(&dict, "result"), Some("error"));
        assert!(wire::get_str(&dict, "error-reason").is_some_and(|r| r.contains("70")));
        let small = wire::encode("c", &wire::dict([("result", wire::text("ok"))]));
        assert_eq!(fit("c", small.clone(), MAX_DATAGRAM), small);
    }

    #[test]
    fn only_allowed_networks_are_served() {
        let loopback = NgAccess::default();
        assert!(loopback.allows("127.0.0.1".parse().expect("ip")));
        assert!(loopback.allows("127.9.9.9".parse().expect("ip")));
        assert!(loopback.allows("::1".parse().expect("ip")));
        assert!(loopback.allows("::ffff:127.0.0.1".parse().expect("ip")));
        assert!(!loopback.allows("10.0.0.1".parse().expect("ip")));
        let private = NgAccess::new(vec!["10.1.0.0/16".parse().expect("net")]);
        assert!(private.allows("10.1.2.3".parse().expect("ip")));
        assert!(!private.allows("10.2.0.1".parse().expect("ip")));
        assert!(!private.allows("127.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn refusals_are_logged_at_a_bounded_rate() {
        let mut log = RefusalLog::new();
        let t0 = log.window;
        let admitted = (0..1000).filter(|_| log.admit(t0).is_some()).count();
        assert_eq!(admitted, REFUSAL_LOGS_PER_SECOND as usize);
        let next = log.admit(t0 + Duration::from_secs(1));
        assert_eq!(next, Some(1000 - u64::from(REFUSAL_LOGS_PER_SECOND)));
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(
            "udp:127.0.0.1:2223".parse::<NgAddr>(),
            Ok(NgAddr::Udp("127.0.0.1:2223".parse().expect("addr")))
        );
        assert_eq!(
            "tcp:[::1]:2223".parse::<NgAddr>(),
            Ok(NgAddr::Tcp("[::1]:2223".parse().expect("addr")))
        );
        // rtpengine's form: IP:PORT is UDP; a bare port is refused with the
        // form to write.
        assert_eq!(
            "127.0.0.1:2299".parse::<NgAddr>(),
            Ok(NgAddr::Udp("127.0.0.1:2299".parse().expect("addr")))
        );
        assert_eq!(
            "[::1]:2299".parse::<NgAddr>(),
            Ok(NgAddr::Udp("[::1]:2299".parse().expect("addr")))
        );
        let bare = "2299".parse::<NgAddr>().expect_err("a bare port");
        assert!(bare.contains("udp:127.0.0.1:2299"), "{bare}");
        assert!("sctp:127.0.0.1:1".parse::<NgAddr>().is_err());
        assert!("udp:localhost:1".parse::<NgAddr>().is_err());
    }
}
