//! DTLS-SRTP handshakes (RFC 5763/5764), on a thread of their own so that
//! their public-key operations and retransmission timers never hold up a
//! media worker.
//!
//! A worker hands over each WebRTC leg when it installs it (a duplicate of
//! the leg's socket, the relay's role, the fingerprint the peer's SDP
//! gave), then the DTLS records that arrive from the leg's ICE-selected
//! peer — nothing from anyone else reaches this thread. The handshake
//! sends its own records from the leg's port. When it completes, the
//! peer's certificate is checked against the fingerprint, the keys are
//! exported and sent back to the worker, which puts them into the leg's
//! SRTP contexts; a mismatch or a failed handshake is reported to the
//! control plane and the leg keeps no keys (its media stays dropped).
//!
//! The DTLS state machine is the `dimpl` crate (sans-IO, DTLS 1.2 and
//! 1.3); everything it is fed is bounded, and a panic inside it ends that
//! one handshake, not the thread.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use mio::Waker;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::core::dtls::{
    DtlsParams, DtlsRole, Fingerprint, HashFunction, SrtpProfile, keys_from_material,
};
use crate::core::ids::{LegId, SessionId, StreamIndex};
use crate::core::stream::LegKeys;
use crate::messages::WorkerEvent;

/// Datagrams and commands queued for the DTLS thread before workers drop
/// (and count) further records; handshakes retransmit.
pub const DTLS_QUEUE: usize = 4096;
/// Largest DTLS record datagram taken (a flight is split to the path MTU).
pub const MAX_DTLS_DATAGRAM: usize = 1500;
/// A handshake that has not completed by then fails.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// The DTLS thread's nice value: below the media workers.
const HANDSHAKE_NICE: i32 = 10;
/// Handshakes at once; beyond it new legs are refused (reported).
pub const MAX_HANDSHAKES: usize = 65_536;

/// The relay's DTLS certificate and its fingerprint for SDP.
#[derive(Clone)]
pub struct DtlsIdentity {
    certificate: dimpl::DtlsCertificate,
    fingerprint: Fingerprint,
}

impl std::fmt::Debug for DtlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DtlsIdentity({})", self.fingerprint)
    }
}

impl DtlsIdentity {
    /// A fresh self-signed ECDSA P-256 certificate (what browsers make for
    /// themselves too: WebRTC trusts the fingerprint in the SDP, not a CA),
    /// with a random serial number so no two relays share one.
    pub fn generate() -> Result<Self, String> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| format!("cannot make a DTLS key: {e}"))?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(|e| format!("cannot make a DTLS certificate: {e}"))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "baton");
        let serial: [u8; 16] = rand::random();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let certificate = params
            .self_signed(&key)
            .map_err(|e| format!("cannot sign the DTLS certificate: {e}"))?;
        Ok(Self::from_der(
            certificate.der().to_vec(),
            key.serialize_der(),
        ))
    }

    /// A certificate and its PKCS#8 private key from PEM text (the
    /// operator's, from the configuration).
    pub fn from_pem(certificate_pem: &str, key_pem: &str) -> Result<Self, String> {
        let certificate =
            pem::parse(certificate_pem).map_err(|e| format!("DTLS certificate: not PEM: {e}"))?;
        if certificate.tag() != "CERTIFICATE" {
            return Err(format!(
                "DTLS certificate: a PEM {} block, not CERTIFICATE",
                certificate.tag()
            ));
        }
        let key = rcgen::KeyPair::from_pem(key_pem)
            .map_err(|e| format!("DTLS key: not a PKCS#8 PEM private key: {e}"))?;
        if !key.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256)
            && !key.is_compatible(&rcgen::PKCS_ECDSA_P384_SHA384)
        {
            return Err("DTLS key: only ECDSA P-256 and P-384 keys are supported".to_owned());
        }
        Ok(Self::from_der(
            certificate.contents().to_vec(),
            key.serialize_der(),
        ))
    }

    fn from_der(certificate: Vec<u8>, private_key: Vec<u8>) -> Self {
        let fingerprint = Fingerprint::of_certificate(HashFunction::Sha256, &certificate);
        Self {
            certificate: dimpl::DtlsCertificate {
                certificate,
                private_key,
            },
            fingerprint,
        }
    }

    /// The sha-256 fingerprint for `a=fingerprint`.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The certificate and key as the DTLS engine takes them (for
    /// `baton load`'s WebRTC clients).
    pub fn engine_certificate(&self) -> dimpl::DtlsCertificate {
        self.certificate.clone()
    }
}

/// Which leg a handshake belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct LegKey {
    pub session: SessionId,
    pub stream: StreamIndex,
    pub leg: LegId,
}

/// Keys for a leg, from the DTLS thread to the leg's worker.
#[derive(Debug)]
pub(crate) struct HandshakeDone {
    pub key: LegKey,
    pub keys: LegKeys,
    /// The settings the handshake ran under: the worker installs the keys
    /// only if the leg still has them.
    pub params: DtlsParams,
}

/// How the DTLS thread reaches a worker.
#[derive(Clone)]
pub(crate) struct WorkerLink {
    pub keys: Sender<HandshakeDone>,
    pub waker: Arc<Waker>,
}

/// What workers tell the DTLS thread.
pub(crate) enum DtlsCommand {
    /// A WebRTC leg was installed (or its DTLS settings changed).
    Open {
        key: LegKey,
        socket: UdpSocket,
        params: DtlsParams,
        worker: WorkerLink,
    },
    /// ICE selected (or moved) the leg's peer: a client starts its
    /// handshake toward it.
    Peer { key: LegKey, addr: SocketAddr },
    /// A DTLS record from the leg's selected peer.
    Datagram {
        key: LegKey,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    /// The leg closed.
    Close { key: LegKey },
    /// The session ended: every leg of it.
    CloseSession { session: SessionId },
}

/// The workers' way to the DTLS thread: records on a bounded queue (a full
/// one drops them, counted; handshakes retransmit), everything else on an
/// unbounded one that never drops — a lost `Close` would keep a socket
/// open after its port went back to the pool. Its messages are few: a
/// handful per leg.
#[derive(Clone)]
pub(crate) struct DtlsHandle {
    control: Sender<DtlsCommand>,
    records: Sender<DtlsCommand>,
}

impl DtlsHandle {
    /// Queues a command; false if it was dropped (a record on a full
    /// queue) or the thread is gone.
    pub fn send(&self, command: DtlsCommand) -> bool {
        match command {
            DtlsCommand::Datagram { .. } => self.records.try_send(command).is_ok(),
            DtlsCommand::Open { .. }
            | DtlsCommand::Peer { .. }
            | DtlsCommand::Close { .. }
            | DtlsCommand::CloseSession { .. } => self.control.send(command).is_ok(),
        }
    }
}

/// Resets of one leg's handshake after failures before it is given up:
/// a stray or forged record can end a DTLS handshake, and the peer's next
/// ClientHello must still find one.
const MAX_RESETS: u32 = 5;

struct Handshake {
    dtls: dimpl::Dtls,
    socket: UdpSocket,
    params: DtlsParams,
    worker: WorkerLink,
    peer: Option<SocketAddr>,
    next_timeout: Option<Instant>,
    /// Set when the handshake starts (the first record, or a client's
    /// start), not when the leg opens: a browser's answer can wait for a
    /// long ringing.
    deadline: Option<Instant>,
    verified: bool,
    material: Option<(Vec<u8>, SrtpProfile)>,
    done: bool,
    /// When the keys went to the worker: the engine and its descriptor of
    /// the leg's socket are kept a little longer (a peer whose last flight
    /// got lost retransmits it), then dropped.
    finished_at: Option<Instant>,
    resets: u32,
    /// The earliest time this leg has in the timer heap, if any: a time is
    /// pushed only when it comes before it (the heap holds at most a few
    /// entries per leg).
    scheduled: Option<Instant>,
}

/// How long a finished handshake is kept for the peer's retransmissions
/// (its flights are retried after 1, 2, 4, 8 … s) before the engine and
/// its socket descriptor go.
const FINISHED_GRACE: Duration = Duration::from_secs(30);
/// Timers further away than this are not scheduled: a completed
/// handshake's engine asks to be woken years from now.
const FAR_FUTURE: Duration = Duration::from_secs(3600);

impl Handshake {
    fn engine(
        config: &Arc<dimpl::Config>,
        identity: &DtlsIdentity,
        role: DtlsRole,
        now: Instant,
    ) -> dimpl::Dtls {
        match role {
            // Either version, as the client's hello says.
            DtlsRole::Server => {
                dimpl::Dtls::new_auto(Arc::clone(config), identity.certificate.clone(), now)
            }
            // Started (made active) once ICE has selected the peer.
            DtlsRole::Client => {
                dimpl::Dtls::new_12(Arc::clone(config), identity.certificate.clone(), now)
            }
        }
    }

    /// The earliest time this handshake needs the thread.
    fn wake_at(&self) -> Option<Instant> {
        let deadline = self.deadline.filter(|_| !self.done);
        let retire = self.finished_at.map(|at| at + FINISHED_GRACE);
        [self.next_timeout, deadline, retire]
            .into_iter()
            .flatten()
            .min()
    }
}

/// Starts the DTLS thread.
pub(crate) fn spawn(
    identity: Arc<DtlsIdentity>,
    events: mpsc::Sender<WorkerEvent>,
) -> std::io::Result<(DtlsHandle, JoinHandle<()>)> {
    let (control, control_rx) = crossbeam_channel::unbounded();
    let (records, records_rx) = crossbeam_channel::bounded(DTLS_QUEUE);
    // Set up here (its buffers, its configuration), before the relay takes
    // calls, so that nothing of it happens later beside media. Not in the
    // thread with a wait for it to say so: under SCHED_FIFO on one core,
    // a waiter spinning on a channel whose sender was descheduled mid-send
    // never lets the sender finish (a relay started that way hung, 100 %
    // CPU, before opening its control socket).
    let mut state = DtlsThread::new(identity, events);
    let thread = std::thread::Builder::new()
        .name("baton-dtls".to_owned())
        .spawn(move || {
            // Handshakes wait a little; media must not: when both could
            // run, the workers go first.
            if let Err(e) = crate::io::sys::lower_thread_priority(HANDSHAKE_NICE) {
                debug!("DTLS thread keeps its priority: {e}");
            }
            state.run(&control_rx, &records_rx);
        })?;
    Ok((DtlsHandle { control, records }, thread))
}

fn config() -> Arc<dimpl::Config> {
    let built = dimpl::Config::builder()
        .mtu(1200)
        .handshake_timeout(HANDSHAKE_TIMEOUT)
        .build();
    Arc::new(built.unwrap_or_default())
}

struct DtlsThread {
    identity: Arc<DtlsIdentity>,
    events: mpsc::Sender<WorkerEvent>,
    config: Arc<dimpl::Config>,
    legs: HashMap<LegKey, Handshake>,
    /// When each leg next needs the thread; stale entries (the leg's time
    /// moved, or it closed) are skipped when they come up.
    timers: BinaryHeap<Reverse<(Instant, LegKey)>>,
    out: Vec<u8>,
}

impl DtlsThread {
    fn new(identity: Arc<DtlsIdentity>, events: mpsc::Sender<WorkerEvent>) -> Self {
        Self {
            identity,
            events,
            config: config(),
            legs: HashMap::with_capacity(64),
            timers: BinaryHeap::with_capacity(64),
            out: vec![0u8; 2048],
        }
    }

    fn run(&mut self, control: &Receiver<DtlsCommand>, records: &Receiver<DtlsCommand>) {
        loop {
            let now = Instant::now();
            let wait = self
                .timers
                .peek()
                .map_or(Duration::from_secs(1), |Reverse((at, _))| {
                    at.saturating_duration_since(now)
                });
            // Control first: a leg's Open must come before its records.
            let command = match control.try_recv() {
                Ok(command) => Some(command),
                Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) => crossbeam_channel::select! {
                    recv(control) -> command => match command {
                        Ok(command) => Some(command),
                        Err(_) => return,
                    },
                    recv(records) -> command => command.ok(),
                    default(wait) => None,
                },
            };
            let now = Instant::now();
            if let Some(command) = command {
                self.handle(command, now);
            }
            self.fire_timers(now);
        }
    }

    fn handle(&mut self, command: DtlsCommand, now: Instant) {
        match command {
            DtlsCommand::Open {
                key,
                socket,
                params,
                worker,
            } => {
                if self.legs.len() >= MAX_HANDSHAKES && !self.legs.contains_key(&key) {
                    report_failure(&self.events, key, "too many DTLS handshakes at once");
                    return;
                }
                let peer = self.legs.get(&key).and_then(|h| h.peer);
                let dtls = Handshake::engine(&self.config, &self.identity, params.role, now);
                self.legs.insert(
                    key,
                    Handshake {
                        dtls,
                        socket,
                        params,
                        worker,
                        peer,
                        next_timeout: None,
                        deadline: None,
                        verified: false,
                        material: None,
                        done: false,
                        finished_at: None,
                        resets: 0,
                        scheduled: None,
                    },
                );
                if peer.is_some() {
                    self.start_client(key, now);
                }
            }
            DtlsCommand::Peer { key, addr } => {
                let Some(h) = self.legs.get_mut(&key) else {
                    return;
                };
                h.peer = Some(addr);
                // A client not started yet starts now (does nothing for a
                // server or a client under way).
                self.start_client(key, now);
            }
            DtlsCommand::Datagram { key, from, bytes } => {
                let Some(h) = self.legs.get_mut(&key) else {
                    return;
                };
                // The worker passes only the selected peer's records.
                h.peer = Some(from);
                h.deadline.get_or_insert(now + HANDSHAKE_TIMEOUT);
                let fed = guarded(|| {
                    h.dtls.handle_timeout(now)?;
                    h.dtls.handle_packet(&bytes)
                });
                match fed {
                    Ok(()) => self.drain(key, now),
                    Err(reason) => self.fail(key, &reason, now),
                }
            }
            DtlsCommand::Close { key } => {
                self.legs.remove(&key);
            }
            DtlsCommand::CloseSession { session } => {
                self.legs.retain(|key, _| key.session != session);
            }
        }
    }

    /// A client starts toward its (ICE-selected) peer.
    fn start_client(&mut self, key: LegKey, now: Instant) {
        let Some(h) = self.legs.get_mut(&key) else {
            return;
        };
        if h.params.role == DtlsRole::Client && !h.dtls.is_active() && h.peer.is_some() {
            h.dtls.set_active(true);
            h.deadline = Some(now + HANDSHAKE_TIMEOUT);
            self.drain(key, now);
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, key))) = self.timers.peek().copied() {
            if at > now {
                return;
            }
            self.timers.pop();
            let Some(h) = self.legs.get_mut(&key) else {
                continue; // closed
            };
            if h.scheduled == Some(at) {
                h.scheduled = None;
            }
            match h.wake_at() {
                None => continue,
                Some(wake) if wake > now => {
                    // Stale: the leg's time moved later. It stays in the
                    // heap under its real time.
                    if h.scheduled.is_none() && wake < now + FAR_FUTURE {
                        h.scheduled = Some(wake);
                        self.timers.push(Reverse((wake, key)));
                    }
                    continue;
                }
                Some(_) => {}
            }
            if h.finished_at.is_some_and(|at| at + FINISHED_GRACE <= now) {
                // Done long enough: the keys are the leg's; the engine and
                // the socket descriptor go (late records are ignored).
                self.legs.remove(&key);
                continue;
            }
            if !h.done && h.deadline.is_some_and(|d| d <= now) {
                self.fail(key, "the DTLS handshake did not complete in 30 s", now);
                continue;
            }
            h.next_timeout = None;
            match guarded(|| h.dtls.handle_timeout(now)) {
                Ok(()) => self.drain(key, now),
                Err(reason) => self.fail(key, &reason, now),
            }
        }
    }

    /// Sends what the engine has to send and acts on what it reports.
    fn drain(&mut self, key: LegKey, now: Instant) {
        if let Err(reason) = drain(&mut self.legs, key, &mut self.out, &self.events) {
            self.fail(key, &reason, now);
            return;
        }
        let Some(h) = self.legs.get_mut(&key) else {
            return;
        };
        if let Some(at) = h.wake_at().filter(|at| *at < now + FAR_FUTURE)
            && h.scheduled.is_none_or(|scheduled| at < scheduled)
        {
            h.scheduled = Some(at);
            self.timers.push(Reverse((at, key)));
        }
        // Entries of closed legs go when they come up; should they pile up
        // (many legs closed with timers far ahead), the heap is rebuilt.
        if self.timers.len() > 2 * self.legs.len() + 64 {
            let legs = &self.legs;
            self.timers
                .retain(|Reverse((_, key))| legs.contains_key(key));
        }
    }

    /// A failed handshake is reported, then begun again for the peer's
    /// next attempt (a few times), or given up.
    fn fail(&mut self, key: LegKey, reason: &str, now: Instant) {
        let Some(h) = self.legs.get_mut(&key) else {
            return;
        };
        if h.done {
            // Keys are in; what the peer sends now changes nothing, and is
            // not worth an event per record.
            debug!(session = %key.session, "after the handshake: {reason}");
            return;
        }
        warn!(session = %key.session, stream = %key.stream, leg = %key.leg, "{reason}");
        report_failure(&self.events, key, reason);
        if h.resets >= MAX_RESETS {
            // The peer keeps failing: no more handshakes on this leg.
            self.legs.remove(&key);
            return;
        }
        h.resets += 1;
        h.dtls = Handshake::engine(&self.config, &self.identity, h.params.role, now);
        h.deadline = None;
        h.next_timeout = None;
        h.scheduled = None;
        h.verified = false;
        h.material = None;
        if h.params.role == DtlsRole::Client {
            self.start_client(key, now);
        }
    }
}

/// Runs a call into the DTLS engine; its error or panic is that
/// handshake's failure.
fn guarded(call: impl FnOnce() -> Result<(), dimpl::Error>) -> Result<(), String> {
    match panic::catch_unwind(AssertUnwindSafe(call)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("DTLS: {e}")),
        Err(_) => Err("DTLS: the handshake failed on malformed input".to_owned()),
    }
}

/// Sends what the engine has to send and acts on what it reports.
fn drain(
    legs: &mut HashMap<LegKey, Handshake>,
    key: LegKey,
    out: &mut Vec<u8>,
    events: &mpsc::Sender<WorkerEvent>,
) -> Result<(), String> {
    let Some(h) = legs.get_mut(&key) else {
        return Ok(());
    };
    loop {
        let polled = panic::catch_unwind(AssertUnwindSafe(|| {
            // Copied out of the engine's borrow of `out`.
            match h.dtls.poll_output(out) {
                dimpl::Output::Packet(p) => Polled::Packet(p.len()),
                dimpl::Output::BufferTooSmall { needed } => Polled::Grow(needed),
                dimpl::Output::Timeout(at) => Polled::Timeout(at),
                dimpl::Output::Connected => Polled::Connected,
                dimpl::Output::PeerCert(der) => Polled::PeerCert(h.params.peer.matches(der)),
                dimpl::Output::KeyingMaterial(material, profile) => {
                    Polled::Material(material.to_vec(), profile)
                }
                dimpl::Output::CloseNotify => Polled::Closed,
                // Application data: no data channels here.
                dimpl::Output::ApplicationData(_) => Polled::Nothing,
                // Anything a newer engine reports is not used.
                #[allow(clippy::wildcard_enum_match_arm)]
                _ => Polled::Nothing,
            }
        }))
        .map_err(|_| "DTLS: the handshake failed on malformed input".to_owned())?;
        match polled {
            Polled::Packet(len) => {
                if let Some(peer) = h.peer {
                    // Non-blocking: a full socket loses this record, and the
                    // handshake retransmits it.
                    if let Err(e) = h.socket.send_to(&out[..len], peer) {
                        debug!("DTLS send to {peer}: {e}");
                    }
                }
            }
            Polled::Grow(needed) => {
                if needed > 65_536 {
                    return Err("DTLS: a record larger than 64 KiB".to_owned());
                }
                out.resize(needed, 0);
            }
            Polled::Timeout(at) => {
                h.next_timeout = Some(at);
                return Ok(());
            }
            Polled::PeerCert(true) => h.verified = true,
            Polled::PeerCert(false) => {
                return Err(format!(
                    "the peer's DTLS certificate does not match its a=fingerprint ({})",
                    h.params.peer.hash().name()
                ));
            }
            Polled::Material(material, profile) => {
                let profile = match profile {
                    dimpl::SrtpProfile::AES128_CM_SHA1_80 => SrtpProfile::Aes128CmSha1_80,
                    dimpl::SrtpProfile::AEAD_AES_128_GCM => SrtpProfile::AeadAes128Gcm,
                    dimpl::SrtpProfile::AEAD_AES_256_GCM => SrtpProfile::AeadAes256Gcm,
                    _ => return Err("DTLS: an SRTP profile the relay does not know".to_owned()),
                };
                h.material = Some((material, profile));
            }
            Polled::Connected | Polled::Nothing => {}
            Polled::Closed => {
                debug!(session = %key.session, "DTLS close_notify from the peer");
            }
        }
        if !h.done && h.verified && h.material.is_some() {
            let Some((material, profile)) = h.material.take() else {
                continue;
            };
            let keys = keys_from_material(&material, profile, h.params.role)?;
            let sent = h.worker.keys.try_send(HandshakeDone {
                key,
                keys,
                params: h.params,
            });
            if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = sent {
                return Err("the media worker could not take the DTLS keys".to_owned());
            }
            h.done = true;
            h.finished_at = Some(Instant::now());
            let _ = h.worker.waker.wake();
            let _ = events.try_send(WorkerEvent::DtlsConnected {
                id: key.session,
                stream: key.stream,
                leg: key.leg,
                suite: profile.suite(),
            });
        }
    }
}

enum Polled {
    Packet(usize),
    Grow(usize),
    Timeout(Instant),
    Connected,
    PeerCert(bool),
    Material(Vec<u8>, dimpl::SrtpProfile),
    Closed,
    Nothing,
}

fn report_failure(events: &mpsc::Sender<WorkerEvent>, key: LegKey, reason: &str) {
    let _ = events.try_send(WorkerEvent::DtlsFailed {
        id: key.session,
        stream: key.stream,
        leg: key.leg,
        reason: reason.to_owned(),
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::core::dtls::HashFunction;

    fn handshake(thread: &DtlsThread, finished_at: Option<Instant>) -> Handshake {
        let now = Instant::now();
        let (keys, _) = crossbeam_channel::bounded(1);
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        Handshake {
            dtls: Handshake::engine(&thread.config, &thread.identity, DtlsRole::Server, now),
            socket: UdpSocket::bind("127.0.0.1:0").unwrap(),
            params: DtlsParams {
                role: DtlsRole::Server,
                peer: Fingerprint::of_certificate(HashFunction::Sha256, b"peer"),
            },
            worker: WorkerLink { keys, waker },
            peer: None,
            next_timeout: None,
            deadline: None,
            verified: true,
            material: None,
            done: finished_at.is_some(),
            finished_at,
            resets: 0,
            scheduled: None,
        }
    }

    fn key(leg: usize) -> LegKey {
        LegKey {
            session: SessionId(1),
            stream: StreamIndex(0),
            leg: LegId::new(leg).unwrap(),
        }
    }

    #[test]
    fn finished_handshakes_are_dropped_after_their_grace_and_no_sooner() {
        let (events, _) = mpsc::channel(8);
        let mut thread = DtlsThread::new(Arc::new(DtlsIdentity::generate().unwrap()), events);
        let now = Instant::now();
        let long_ago = now
            .checked_sub(FINISHED_GRACE + Duration::from_secs(1))
            .unwrap();
        let just_now = now.checked_sub(Duration::from_secs(1)).unwrap();
        for (leg, finished) in [(0, Some(long_ago)), (1, Some(just_now)), (2, None)] {
            let h = handshake(&thread, finished);
            thread.legs.insert(key(leg), h);
            if let Some(at) = thread.legs[&key(leg)].wake_at() {
                thread.timers.push(Reverse((at, key(leg))));
            }
        }
        thread.fire_timers(now);
        assert!(
            !thread.legs.contains_key(&key(0)),
            "finished 31 s ago: dropped"
        );
        assert!(thread.legs.contains_key(&key(1)), "finished 1 s ago: kept");
        assert!(thread.legs.contains_key(&key(2)), "not finished: kept");
        // The kept finished one goes when its grace ends.
        thread.fire_timers(just_now + FINISHED_GRACE);
        assert!(!thread.legs.contains_key(&key(1)));
        assert!(thread.legs.contains_key(&key(2)));
    }
}
