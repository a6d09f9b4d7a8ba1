//! ng listeners: UDP (what Kamailio and OpenSIPS use) and TCP.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::cache::{CookieCache, Seen};
use super::commands::NgService;
use super::wire;

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
        let (kind, addr) = text.split_once(':').ok_or_else(|| {
            format!("ng address {text:?}: expected udp:HOST:PORT or tcp:HOST:PORT")
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
    service: &NgService,
    cache: &Mutex<CookieCache>,
    from: SocketAddr,
    message: &[u8],
    limit: usize,
) -> Option<Vec<u8>> {
    let (cookie, body) = match wire::split(message) {
        Ok(parts) => parts,
        Err(reason) => {
            debug!(%from, reason, "ng: message without a cookie dropped");
            return None;
        }
    };
    let seen =
        cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .begin(Instant::now(), from, cookie);
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
            let reply = service.handle(&request).await;
            if let serde_bencode::value::Value::Dict(fields) = &reply
                && wire::get_str(fields, "result") == Some("error")
            {
                info!(
                    %from,
                    command = wire::get_str(&request, "command").unwrap_or("?"),
                    call_id = wire::get_str(&request, "call-id").unwrap_or(""),
                    reason = wire::get_str(fields, "error-reason").unwrap_or(""),
                    "ng request refused"
                );
            }
            reply
        }
        Err(reason) => wire::error(format!("malformed message: {reason}")),
    };
    let bytes = fit(cookie, wire::encode(cookie, &reply), limit);
    cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .finish(from, cookie, &bytes);
    Some(bytes)
}

/// `reply`, or an error in its place if it is longer than `limit`: a
/// datagram cut short would be garbage to the proxy.
fn fit(cookie: &str, reply: Vec<u8>, limit: usize) -> Vec<u8> {
    if reply.len() <= limit {
        return reply;
    }
    warn!(
        cookie,
        bytes = reply.len(),
        "ng: reply too large for a datagram; sent an error instead"
    );
    wire::encode(
        cookie,
        &wire::error(format!(
            "the reply ({} bytes) does not fit a datagram; query by tag, or use ng over TCP",
            reply.len()
        )),
    )
}

/// Serves ng on `addr` until the task is dropped.
pub async fn serve(addr: NgAddr, service: NgService) -> std::io::Result<SocketAddr> {
    let cache = Arc::new(Mutex::new(CookieCache::default()));
    match addr {
        NgAddr::Udp(addr) => {
            let socket = Arc::new(UdpSocket::bind(addr).await?);
            let local = socket.local_addr()?;
            info!(listen = %NgAddr::Udp(local), "ng listener ready");
            tokio::spawn(serve_udp(socket, service, cache));
            Ok(local)
        }
        NgAddr::Tcp(addr) => {
            let listener = TcpListener::bind(addr).await?;
            let local = listener.local_addr()?;
            info!(listen = %NgAddr::Tcp(local), "ng listener ready");
            tokio::spawn(serve_tcp(listener, service, cache));
            Ok(local)
        }
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, service: NgService, cache: Arc<Mutex<CookieCache>>) {
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
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let message = buf[..len].to_vec();
        let (socket, service, cache) = (Arc::clone(&socket), service.clone(), Arc::clone(&cache));
        tokio::spawn(async move {
            if let Some(reply) = respond(&service, &cache, from, &message, MAX_DATAGRAM).await
                && let Err(e) = socket.send_to(&reply, from).await
            {
                debug!(%from, error = %e, "ng: reply not sent");
            }
            drop(slot);
        });
    }
}

async fn serve_tcp(listener: TcpListener, service: NgService, cache: Arc<Mutex<CookieCache>>) {
    let clients = Arc::new(Semaphore::new(MAX_TCP_CLIENTS));
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                let Ok(slot) = Arc::clone(&clients).try_acquire_owned() else {
                    warn!(%from, limit = MAX_TCP_CLIENTS, "ng: TCP client refused: limit reached");
                    drop(stream);
                    continue;
                };
                let (service, cache) = (service.clone(), Arc::clone(&cache));
                tokio::spawn(async move {
                    if let Err(reason) = serve_connection(stream, from, &service, &cache).await {
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
    service: &NgService,
    cache: &Mutex<CookieCache>,
) -> Result<(), String> {
    let mut buffer: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        // Take every complete message in the buffer.
        loop {
            let start = buffer
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(buffer.len());
            buffer.drain(..start);
            let Some(space) = buffer.iter().position(|&b| b == b' ') else {
                if buffer.len() > wire::MAX_COOKIE {
                    return Err("no cookie".to_owned());
                }
                break;
            };
            let end = match wire::extent(&buffer[space + 1..]) {
                Ok(Some(len)) => space + 1 + len,
                Ok(None) => break,
                Err(reason) => {
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
            if let Some(reply) = respond(service, cache, from, &message, usize::MAX).await {
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
    fn addresses_parse() {
        assert_eq!(
            "udp:127.0.0.1:2223".parse::<NgAddr>(),
            Ok(NgAddr::Udp("127.0.0.1:2223".parse().expect("addr")))
        );
        assert_eq!(
            "tcp:[::1]:2223".parse::<NgAddr>(),
            Ok(NgAddr::Tcp("[::1]:2223".parse().expect("addr")))
        );
        assert!("sctp:127.0.0.1:1".parse::<NgAddr>().is_err());
        assert!("udp:localhost:1".parse::<NgAddr>().is_err());
    }
}
