//! `--webrtc-legs-per-second`: new WebRTC legs at a steady rate while the
//! calls run, to measure what handshakes cost the media already flowing.
//!
//! Each leg is a call whose device is a WebRTC client made here: the
//! session is created from its offer (`UDP/TLS/RTP/SAVPF`, ICE credentials,
//! the client's certificate fingerprint) toward a plain remote, then the
//! client checks the relay's candidate (a nominating STUN Binding request)
//! and runs a DTLS client handshake against it, checking the relay's
//! fingerprint; the time from the first check to the exported keys is the
//! leg's setup time. The call is deleted a second later.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use baton_control::Client;
use baton_proto::v1::{self, request::Command, response::Result as Reply};
use baton_relay::core::dtls::Fingerprint;
use baton_relay::core::stun::{self, IceText};
use baton_relay::io::dtls::DtlsIdentity;
use hdrhistogram::Histogram;

/// Most new legs a second (each is a handshake on both sides).
const MAX_RATE: f64 = 10_000.0;
/// How long one leg may take to connect.
const SETUP_LIMIT: Duration = Duration::from_secs(5);
/// The WebRTC clients' nice value, below the generator threads.
const CLIENT_NICE: i32 = 15;
/// How long a connected leg lives before its call is deleted.
const LEG_LIFETIME: Duration = Duration::from_secs(1);

/// What the churn did.
#[derive(Debug)]
pub(crate) struct ChurnStats {
    /// Legs begun.
    pub attempted: u64,
    /// Legs whose ICE check and DTLS handshake completed.
    pub connected: u64,
    /// Legs that failed (the first reasons kept).
    pub failed: u64,
    /// Reasons of the first failures.
    pub reasons: Vec<String>,
    /// Setup time (first check → keys), microseconds.
    pub setup_us: Histogram<u64>,
}

impl ChurnStats {
    /// The summary line.
    pub fn line(&self, rate: f64) -> String {
        format!(
            "webrtc legs: {rate} per second, {} begun, {} connected, {} failed; ICE+DTLS setup p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.attempted,
            self.connected,
            self.failed,
            self.setup_us.value_at_quantile(0.5) as f64 / 1000.0,
            self.setup_us.value_at_quantile(0.99) as f64 / 1000.0,
            self.setup_us.max() as f64 / 1000.0,
        )
    }

    /// As JSON.
    pub fn json(&self, rate: f64) -> serde_json::Value {
        serde_json::json!({
            "webrtc_legs_per_second": rate,
            "attempted": self.attempted,
            "connected": self.connected,
            "failed": self.failed,
            "failure_reasons": self.reasons,
            "setup_ms_p50": self.setup_us.value_at_quantile(0.5) as f64 / 1000.0,
            "setup_ms_p99": self.setup_us.value_at_quantile(0.99) as f64 / 1000.0,
            "setup_ms_max": self.setup_us.max() as f64 / 1000.0,
        })
    }
}

/// Opens `rate` WebRTC legs a second until `until`, then waits for the
/// last ones.
pub(crate) async fn churn(client: Client, rate: f64, until: Instant) -> anyhow::Result<ChurnStats> {
    if !(rate.is_finite() && rate > 0.0 && rate <= MAX_RATE) {
        bail!("--webrtc-legs-per-second must be above 0 and at most {MAX_RATE}");
    }
    let client = Arc::new(client);
    let identity = Arc::new(DtlsIdentity::generate().map_err(anyhow::Error::msg)?);
    let every = Duration::from_secs_f64(1.0 / rate);
    let mut next = Instant::now();
    let mut legs = Vec::new();
    let mut serial = 0u64;
    while next < until {
        tokio::time::sleep_until(next.into()).await;
        next += every;
        serial += 1;
        let (client, identity) = (Arc::clone(&client), Arc::clone(&identity));
        legs.push(tokio::spawn(async move {
            leg(&client, &identity, serial).await
        }));
    }
    let mut stats = ChurnStats {
        attempted: legs.len() as u64,
        connected: 0,
        failed: 0,
        reasons: Vec::new(),
        setup_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
    };
    for leg in legs {
        match leg.await {
            Ok(Ok(took)) => {
                stats.connected += 1;
                let _ = stats
                    .setup_us
                    .record((took.as_micros() as u64).clamp(1, 60_000_000));
            }
            Ok(Err(e)) => {
                stats.failed += 1;
                if stats.reasons.len() < 5 {
                    stats.reasons.push(format!("{e:#}"));
                }
            }
            Err(e) => {
                stats.failed += 1;
                if stats.reasons.len() < 5 {
                    stats.reasons.push(e.to_string());
                }
            }
        }
    }
    Ok(stats)
}

/// One WebRTC leg: the call, the check, the handshake, the delete.
async fn leg(
    client: &Client,
    identity: &Arc<DtlsIdentity>,
    serial: u64,
) -> anyhow::Result<Duration> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let remote = UdpSocket::bind("127.0.0.1:0")?;
    let local = socket.local_addr()?;
    let ufrag = format!("ld{:06}", serial % 1_000_000);
    let offer = format!(
        "v=0\r\no=- {serial} 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
         m=audio {port} UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 127.0.0.1\r\na=mid:0\r\n\
         a=ice-ufrag:{ufrag}\r\na=ice-pwd:loadgeneratorpasswordxyz\r\n\
         a=fingerprint:{fingerprint}\r\na=setup:actpass\r\na=rtcp-mux\r\n\
         a=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
        port = local.port(),
        fingerprint = identity.fingerprint(),
    );
    let created = match client
        .call(Command::CreateSession(v1::CreateSessionRequest {
            call_id: format!("webrtc-load-{serial}"),
            from_tag: "w".into(),
            aor: format!("sip:webrtc-{serial}@load.invalid"),
            gruu: format!(
                "sip:webrtc-{serial}@load.invalid;gr=urn:uuid:00000000-0000-4000-8000-{serial:012}"
            ),
            sdp: offer,
            sdp_from: v1::Party::User as i32,
            other_transport: "RTP/AVP".into(),
            ..Default::default()
        }))
        .await
    {
        Ok(Reply::CreateSession(created)) => created,
        Ok(other) => bail!("unexpected answer to create: {other:?}"),
        Err(e) => bail!("create: {e}"),
    };
    let session = created.session.clone();
    let by_id = || v1::SessionRef {
        by: Some(v1::session_ref::By::Id(session.clone())),
    };
    let result = connect_leg(client, identity, &socket, &remote, ufrag, by_id()).await;
    if result.is_ok() {
        tokio::time::sleep(LEG_LIFETIME).await;
    }
    // Deleted whatever happened, so no leg outlives the run.
    let _ = client
        .call(Command::DeleteSession(v1::DeleteSessionRequest {
            session: Some(by_id()),
        }))
        .await;
    result
}

/// The remote's answer, then the client's check and handshake.
async fn connect_leg(
    client: &Client,
    identity: &Arc<DtlsIdentity>,
    socket: &UdpSocket,
    remote: &UdpSocket,
    ufrag: String,
    session: v1::SessionRef,
) -> anyhow::Result<Duration> {
    let remote_addr = remote.local_addr()?;
    let answer = format!(
        "v=0\r\no=r 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
        remote_addr.port()
    );
    let updated = match client
        .call(Command::UpdateSession(v1::UpdateSessionRequest {
            session: Some(session),
            to_tag: "r".into(),
            sdp: answer,
            sdp_from: v1::Party::Remote as i32,
            ..Default::default()
        }))
        .await
    {
        Ok(Reply::UpdateSession(updated)) => updated,
        Ok(other) => bail!("unexpected answer to update: {other:?}"),
        Err(e) => bail!("update: {e}"),
    };
    let to_client = Relay::read(&updated.sdp)?;
    let certificate = identity.engine_certificate();
    let socket = socket.try_clone()?;
    tokio::task::spawn_blocking(move || {
        // The client's handshake work runs only when the generator's core
        // is otherwise idle, so it does not delay the packets being
        // measured (the relay's side is what is under test). The blocking
        // pool's threads serve nothing else in `baton load`.
        if baton_relay::io::sys::idle_thread_priority().is_err() {
            let _ = baton_relay::io::sys::lower_thread_priority(CLIENT_NICE);
        }
        connect(&socket, &to_client, &ufrag, certificate)
    })
    .await
    .context("the handshake task")?
}

/// What the relay's answer to the client says.
struct Relay {
    candidate: SocketAddr,
    ufrag: String,
    pwd: IceText,
    fingerprint: Fingerprint,
}

impl Relay {
    fn read(sdp: &str) -> anyhow::Result<Self> {
        let attribute = |name: &str| {
            sdp.lines()
                .find_map(|l| l.strip_prefix(&format!("a={name}:")))
                .map(str::trim)
                .with_context(|| format!("no a={name} in the relay's answer"))
        };
        let candidate: Vec<&str> = attribute("candidate")?.split_whitespace().collect();
        let (Some(ip), Some(port)) = (candidate.get(4), candidate.get(5)) else {
            bail!("the relay's candidate is not `FOUNDATION COMPONENT UDP PRIO IP PORT …`");
        };
        Ok(Self {
            candidate: format!("{ip}:{port}").parse()?,
            ufrag: attribute("ice-ufrag")?.to_owned(),
            pwd: IceText::new(attribute("ice-pwd")?).context("the relay's ice-pwd")?,
            fingerprint: Fingerprint::parse(attribute("fingerprint")?)
                .map_err(anyhow::Error::msg)?,
        })
    }
}

/// The nominating check, then a DTLS client handshake; the time from the
/// first check to the keys.
fn connect(
    socket: &UdpSocket,
    relay: &Relay,
    ufrag: &str,
    certificate: dimpl::DtlsCertificate,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let deadline = started + SETUP_LIMIT;
    let transaction: [u8; 12] = rand::random();
    let mut buf = [0u8; 2048];
    let username = format!("{}:{ufrag}", relay.ufrag);
    let len = stun::write_request(&mut buf, &transaction, &username, &relay.pwd, true, 1)
        .context("a STUN request")?;
    let request = buf[..len].to_vec();
    // ICE: retransmit every 100 ms until the response.
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    loop {
        if Instant::now() > deadline {
            bail!("no answer to the ICE check");
        }
        socket.send_to(&request, relay.candidate)?;
        match socket.recv_from(&mut buf) {
            Ok((n, from))
                if from == relay.candidate && stun::is_success_for(&buf[..n], &transaction) =>
            {
                break;
            }
            Ok(_) | Err(_) => {}
        }
    }
    // DTLS client.
    let config = Arc::new(dimpl::Config::default());
    let mut dtls = dimpl::Dtls::new_12(config, certificate, Instant::now());
    dtls.set_active(true);
    let mut out = vec![0u8; 2048];
    let (mut verified, mut keys) = (false, false);
    while Instant::now() < deadline {
        let wake = loop {
            match dtls.poll_output(&mut out) {
                dimpl::Output::Packet(p) => {
                    socket.send_to(p, relay.candidate)?;
                }
                dimpl::Output::Timeout(at) => break at,
                dimpl::Output::PeerCert(der) => {
                    if !relay.fingerprint.matches(der) {
                        bail!("the relay's certificate does not match its a=fingerprint");
                    }
                    verified = true;
                }
                dimpl::Output::KeyingMaterial(..) => keys = true,
                dimpl::Output::BufferTooSmall { needed } => {
                    if needed > 65_536 {
                        bail!("a DTLS record larger than 64 KiB");
                    }
                    out.resize(needed, 0);
                }
                dimpl::Output::Connected
                | dimpl::Output::ApplicationData(_)
                | dimpl::Output::CloseNotify => {}
                // Anything a newer engine reports is not used.
                #[allow(clippy::wildcard_enum_match_arm)]
                _ => {}
            }
        };
        if verified && keys {
            return Ok(started.elapsed());
        }
        let wait = wake
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), Duration::from_millis(100));
        socket.set_read_timeout(Some(wait))?;
        let now = Instant::now();
        match socket.recv_from(&mut buf) {
            Ok((n, from)) if from == relay.candidate && stun::is_dtls(&buf[..n]) => {
                dtls.handle_timeout(now)?;
                dtls.handle_packet(&buf[..n])?;
            }
            Ok(_) => {}
            Err(_) => dtls.handle_timeout(Instant::now())?,
        }
    }
    bail!(
        "the DTLS handshake did not complete in {} s",
        SETUP_LIMIT.as_secs()
    )
}
