//! The metrics endpoint: `GET /metrics` in the Prometheus text format on
//! `--metrics HOST:PORT`, bounded so that scrapers cannot starve control or
//! media (see [`serve`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::service::Service;

/// Scrapers connected at once; more are closed at once (counted).
pub const MAX_METRICS_CONNECTIONS: usize = 32;
/// A scraper must send its request headers within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A metrics connection lasts at most this long, however it behaves.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait before accepting again after an accept error (out of
/// file descriptors, say), instead of spinning on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `GET /metrics` on `addr` until the process ends; returns the
/// bound address. Bounded so that scrapers, however many or slow, cannot
/// starve control or media: a connection cap, header and connection
/// timeouts, a pause after accept errors, and one worker round per scrape at
/// a time.
pub async fn serve(addr: SocketAddr, service: Arc<Service>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    info!(listen = %local, "metrics endpoint ready");
    let slots = Arc::new(Semaphore::new(MAX_METRICS_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let (stream, from) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "metrics accept failed; pausing");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let telemetry = service.sessions().telemetry();
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                telemetry.refused("metrics_connection_limit");
                debug!(%from, "metrics connection refused: limit reached");
                drop(stream);
                continue;
            };
            let service = Arc::clone(&service);
            tokio::spawn(async move {
                let telemetry = service.sessions().telemetry().clone();
                let handler = service_fn(move |request: Request<Incoming>| {
                    let service = Arc::clone(&service);
                    async move { Ok::<_, Infallible>(respond(&service, &request).await) }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), handler);
                match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(%from, error = %e, "metrics connection ended"),
                    Err(_) => {
                        telemetry.refused("metrics_timeout");
                        debug!(%from, "metrics connection timed out");
                    }
                }
                drop(slot);
            });
        }
    });
    Ok(local)
}

async fn respond(service: &Service, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String, content_type: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, value);
        }
        response
    };
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            service.metrics_text().await,
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        (&Method::GET, "/") => reply(
            StatusCode::OK,
            "baton: metrics at /metrics\n".to_owned(),
            "text/plain; charset=utf-8",
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "not found: GET /metrics\n".to_owned(),
            "text/plain; charset=utf-8",
        ),
    }
}
