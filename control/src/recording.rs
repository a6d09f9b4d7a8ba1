//! Call recording: per recorded session, a pcap file of what the relay
//! sent each party (the outward streams, in the clear even on SRTP legs)
//! and, when the recording ends, a JSON file of the call: its dialog, its
//! user, and the device timeline (which GRUU held the call when, each
//! handoff with its media gap).
//!
//! The workers hand copies over a bounded queue ([`baton_relay::core::record`]);
//! one writer thread writes them. A full queue drops copies and counts them
//! (`baton_recording_dropped_total`), never media; a file that cannot be
//! written is logged, counted (`baton_recording_errors_total`) and given up,
//! never the relay.
//!
//! pcap is written by hand: a global header and, per packet, a record
//! header, an IPv4 header and a UDP header — about forty lines, where a
//! crate would bring a capture library along.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_relay::core::record::{PacketCopy, RecordTap};
use baton_relay::{Party, SessionId};
use crossbeam_channel::{Receiver, Sender};
use serde_json::json;
use tracing::{error, info};

/// Copies the queue holds (about 12 MB; a second of 12 000 packets a
/// second of recorded calls).
const QUEUE: usize = 8192;

/// The addresses the pcap shows: the relay, the remote party and the
/// user's side (documentation addresses; one fixed pair per stream and
/// direction, so that each direction reads as one stream).
const RELAY: [u8; 4] = [192, 0, 2, 1];
const REMOTE: [u8; 4] = [198, 51, 100, 2];
const USER: [u8; 4] = [203, 0, 113, 3];

/// The UDP port of stream `stream` toward `party` in the pcap.
pub fn pcap_port(stream: u16, party: Party) -> u16 {
    20_000u16
        .wrapping_add(stream.wrapping_mul(2))
        .wrapping_add(u16::from(party == Party::User))
}

/// What the writer is told besides the copies.
enum Order {
    /// Finish everything and end (the relay is stopping).
    Shutdown,
    /// Write this session's copies to `file` (and, with `wav`, WAV files
    /// named after this path without its extension).
    Open {
        session: SessionId,
        file: File,
        wav: Option<PathBuf>,
    },
    /// Stop writing this session (pause), or stop and write its metadata.
    Close {
        session: SessionId,
        metadata: Option<(PathBuf, serde_json::Value)>,
    },
}

/// A recording in progress, as the control plane keeps it.
#[derive(Debug, Clone)]
struct Recording {
    pcap: PathBuf,
    started: SystemTime,
    /// (gruu, since): the devices that held the call, in order.
    devices: Vec<(String, SystemTime)>,
    /// (at, from, to, media gap).
    handoffs: Vec<(SystemTime, String, String, Option<Duration>)>,
    paused: bool,
}

/// The relay's recordings.
pub struct Recordings {
    dir: PathBuf,
    wav: bool,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    tap: RecordTap,
    orders: Sender<Order>,
    calls: Mutex<HashMap<SessionId, Recording>>,
    dropped: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
}

impl std::fmt::Debug for Recordings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recordings")
            .field("dir", &self.dir)
            .finish()
    }
}

/// What identifies a recorded call in its metadata.
#[derive(Debug, Clone, Default)]
pub struct CallNames {
    /// Call-ID.
    pub call_id: String,
    /// From tag.
    pub from_tag: String,
    /// To tag.
    pub to_tag: String,
    /// The user's AOR.
    pub aor: String,
    /// The device that has the call.
    pub gruu: String,
}

/// Makes `dir` if missing and checks that a file can be created there.
pub fn check_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(".baton-write-check");
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

impl Recordings {
    /// Recordings into `dir`, created if missing; an error when it cannot
    /// be written (checked by writing a file there).
    /// With `wav`, each G.711 stream is also written as a WAV file per
    /// direction.
    pub fn start(dir: &Path, wav: bool) -> std::io::Result<Self> {
        check_dir(dir)?;
        let (copies_tx, copies) = crossbeam_channel::bounded(QUEUE);
        let (orders, orders_rx) = crossbeam_channel::unbounded();
        let dropped = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let writer_errors = Arc::clone(&errors);
        let writer = std::thread::Builder::new()
            .name("baton-recorder".to_owned())
            .spawn(move || write_loop(&copies, &orders_rx, &writer_errors))?;
        Ok(Self {
            dir: dir.to_owned(),
            wav,
            writer: Mutex::new(Some(writer)),
            tap: RecordTap::new(copies_tx, Arc::clone(&dropped)),
            orders,
            calls: Mutex::new(HashMap::new()),
            dropped,
            errors,
        })
    }

    /// Copies dropped because the queue was full, so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Files given up because they could not be written, so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Whether session `id` is being recorded (not paused).
    pub fn is_recording(&self, id: SessionId) -> bool {
        self.calls().get(&id).is_some_and(|r| !r.paused)
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Recording>> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts (or resumes) recording session `id`: its pcap file is
    /// created (or appended to, after a pause) now, so an unwritable
    /// directory is an error here. The tap goes to the session's worker.
    pub fn begin(&self, id: SessionId, names: &CallNames) -> std::io::Result<(RecordTap, PathBuf)> {
        let mut calls = self.calls();
        let (file, pcap) = match calls.get_mut(&id) {
            Some(recording) => {
                let file = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&recording.pcap)?;
                recording.paused = false;
                (file, recording.pcap.clone())
            }
            None => {
                // A session recorded again after a stop gets a file of its
                // own: an earlier recording is never overwritten.
                let stem = format!("{}-{id}", file_name(&names.call_id));
                let (mut file, pcap) = create_new(&self.dir, &stem)?;
                file.write_all(&pcap_header())?;
                calls.insert(
                    id,
                    Recording {
                        pcap: pcap.clone(),
                        started: SystemTime::now(),
                        devices: vec![(names.gruu.clone(), SystemTime::now())],
                        handoffs: Vec::new(),
                        paused: false,
                    },
                );
                (file, pcap)
            }
        };
        let wav = self.wav.then(|| pcap.with_extension(""));
        let _ = self.orders.send(Order::Open {
            session: id,
            file,
            wav,
        });
        Ok((self.tap.clone(), pcap))
    }

    /// Pauses session `id`'s recording (its worker no longer copies); a
    /// later [`Recordings::begin`] appends to the same file.
    pub fn pause(&self, id: SessionId) {
        if let Some(recording) = self.calls().get_mut(&id) {
            recording.paused = true;
            let _ = self.orders.send(Order::Close {
                session: id,
                metadata: None,
            });
        }
    }

    /// A handoff of a recorded session, for its device timeline.
    pub fn note_handoff(&self, id: SessionId, from: &str, to: &str, gap: Option<Duration>) {
        if let Some(recording) = self.calls().get_mut(&id) {
            let now = SystemTime::now();
            recording.devices.push((to.to_owned(), now));
            recording
                .handoffs
                .push((now, from.to_owned(), to.to_owned(), gap));
        }
    }

    /// Ends session `id`'s recording (stopped, or the call ended): the
    /// writer finishes its pcap and writes its metadata beside it.
    pub fn finish(&self, id: SessionId, names: &CallNames) -> Option<PathBuf> {
        let recording = self.calls().remove(&id)?;
        let ms = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        };
        let ended = SystemTime::now();
        let devices: Vec<serde_json::Value> = recording
            .devices
            .iter()
            .enumerate()
            .map(|(i, (gruu, since))| {
                let until = recording
                    .devices
                    .get(i + 1)
                    .map_or(ended, |(_, next)| *next);
                json!({ "gruu": gruu, "from_unix_ms": ms(*since), "until_unix_ms": ms(until) })
            })
            .collect();
        let handoffs: Vec<serde_json::Value> = recording
            .handoffs
            .iter()
            .map(|(at, from, to, gap)| {
                json!({
                    "at_unix_ms": ms(*at),
                    "from": from,
                    "to": to,
                    "media_gap_ms": gap.map(|g| g.as_secs_f64() * 1000.0),
                })
            })
            .collect();
        let metadata = json!({
            "session": id.to_string(),
            "call_id": names.call_id,
            "from_tag": names.from_tag,
            "to_tag": names.to_tag,
            "aor": names.aor,
            "pcap": recording.pcap.file_name().map(|n| n.to_string_lossy().into_owned()),
            "started_unix_ms": ms(recording.started),
            "ended_unix_ms": ms(ended),
            "devices": devices,
            "handoffs": handoffs,
            "pcap_addresses": {
                "relay": ip(RELAY),
                "remote": ip(REMOTE),
                "user": ip(USER),
                "port_toward_remote_stream_0": pcap_port(0, Party::Remote),
                "port_toward_user_stream_0": pcap_port(0, Party::User),
            },
        });
        let json_path = recording.pcap.with_extension("json");
        let _ = self.orders.send(Order::Close {
            session: id,
            metadata: Some((json_path.clone(), metadata)),
        });
        Some(json_path)
    }
}

impl Recordings {
    /// Finishes every recording still open and waits for the writer (the
    /// relay is stopping: the calls have ended, their copies are queued).
    pub fn shutdown(&self) {
        let _ = self.orders.send(Order::Shutdown);
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(writer) = writer {
            let _ = writer.join();
        }
    }
}

/// A new file `stem.pcap` in `dir` (or `stem-2.pcap`, … when it exists),
/// readable by its owner and group only: a recording is the call's audio.
fn create_new(dir: &Path, stem: &str) -> std::io::Result<(File, PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt;
    for n in 1..=100u32 {
        let path = if n == 1 {
            dir.join(format!("{stem}.pcap"))
        } else {
            dir.join(format!("{stem}-{n}.pcap"))
        };
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&path)
        {
            Ok(file) => return Ok((file, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("100 recordings of this call already"))
}

fn ip(octets: [u8; 4]) -> String {
    std::net::Ipv4Addr::from(octets).to_string()
}

/// A Call-ID as a file name: letters, digits, `.`, `-`, `_`; at most 64.
fn file_name(call_id: &str) -> String {
    let name: String = call_id
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.starts_with('.') {
        format!("call{name}")
    } else {
        name
    }
}

/// pcap's global header: version 2.4, microseconds, raw IPv4 (linktype
/// 228, LINKTYPE_IPV4).
fn pcap_header() -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    h[4..6].copy_from_slice(&2u16.to_le_bytes());
    h[6..8].copy_from_slice(&4u16.to_le_bytes());
    h[16..20].copy_from_slice(&65_535u32.to_le_bytes());
    h[20..24].copy_from_slice(&228u32.to_le_bytes());
    h
}

/// One copy as a pcap record: its time, an IPv4 and a UDP header, the
/// bytes kept.
fn pcap_record(copy: &PacketCopy, wall: SystemTime, out: &mut Vec<u8>) {
    let payload = copy.bytes();
    let udp_len = 8 + usize::from(copy.len);
    let ip_len = 20 + udp_len;
    let kept = 28 + payload.len();
    let since = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
    out.extend_from_slice(
        &u32::try_from(since.as_secs())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(&since.subsec_micros().to_le_bytes());
    out.extend_from_slice(&u32::try_from(kept).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&u32::try_from(ip_len).unwrap_or(u32::MAX).to_le_bytes());
    let (dst, port) = match copy.toward {
        Party::Remote => (REMOTE, pcap_port(copy.stream, Party::Remote)),
        Party::User => (USER, pcap_port(copy.stream, Party::User)),
    };
    let mut header = [0u8; 20];
    header[0] = 0x45;
    header[2..4].copy_from_slice(&u16::try_from(ip_len).unwrap_or(u16::MAX).to_be_bytes());
    header[8] = 64;
    header[9] = 17;
    header[12..16].copy_from_slice(&RELAY);
    header[16..20].copy_from_slice(&dst);
    let sum = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let checksum = !u16::try_from((folded & 0xffff) + (folded >> 16)).unwrap_or(u16::MAX);
    header[10..12].copy_from_slice(&checksum.to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&u16::try_from(udp_len).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
    out.extend_from_slice(payload);
}

/// The writer: copies to their sessions' files, until both queues close.
fn write_loop(copies: &Receiver<PacketCopy>, orders: &Receiver<Order>, errors: &AtomicU64) {
    // The workers' `Instant`s on the wall clock.
    let (base_instant, base_wall) = (Instant::now(), SystemTime::now());
    let wall = |at: Instant| match at.checked_duration_since(base_instant) {
        Some(after) => base_wall + after,
        None => base_wall - base_instant.saturating_duration_since(at),
    };
    let mut files: HashMap<SessionId, CallFiles> = HashMap::new();
    let mut record = Vec::with_capacity(64 + baton_relay::core::record::SNAPLEN);
    let mut write = |files: &mut HashMap<SessionId, CallFiles>, copy: &PacketCopy| {
        let Some(call) = files.get_mut(&copy.session) else {
            return; // paused, ended, or its file given up
        };
        record.clear();
        pcap_record(copy, wall(copy.at), &mut record);
        if let Err(e) = call.write(copy, &record) {
            error!(session = %copy.session, "recording: cannot write its files, recording given up: {e}");
            errors.fetch_add(1, Ordering::Relaxed);
            files.remove(&copy.session);
        }
    };
    let close = |session: SessionId, call: CallFiles| -> Vec<String> {
        call.finish().unwrap_or_else(|e| {
            error!(%session, "recording: cannot finish its files: {e}");
            errors.fetch_add(1, Ordering::Relaxed);
            Vec::new()
        })
    };
    // WAV files of sessions whose metadata is still to come.
    let mut wav_names: HashMap<SessionId, Vec<String>> = HashMap::new();
    loop {
        crossbeam_channel::select! {
            recv(copies) -> copy => match copy {
                Ok(copy) => write(&mut files, &copy),
                Err(_) => break,
            },
            recv(orders) -> order => match order {
                Ok(Order::Open { session, file, wav }) => {
                    files.insert(session, CallFiles::new(file, wav));
                }
                Ok(Order::Shutdown) | Err(_) => {
                    while let Ok(copy) = copies.try_recv() {
                        write(&mut files, &copy);
                    }
                    for (session, call) in files.drain() {
                        let names = close(session, call);
                        wav_names.entry(session).or_default().extend(names);
                    }
                    // The metadata of calls ended just before: their
                    // orders are queued.
                    while let Ok(order) = orders.try_recv() {
                        if let Order::Close {
                            session,
                            metadata: Some((path, mut metadata)),
                        } = order
                        {
                            add_wav_names(&mut metadata, wav_names.remove(&session));
                            write_metadata(session, &path, &metadata, errors);
                        }
                    }
                    break;
                }
                Ok(Order::Close { session, metadata }) => {
                    // What the session's worker copied before it stopped
                    // is in the queue already: it goes in first (what is
                    // there now, not what keeps coming from other calls).
                    for _ in 0..copies.len() {
                        match copies.try_recv() {
                            Ok(copy) => write(&mut files, &copy),
                            Err(_) => break,
                        }
                    }
                    if let Some(call) = files.remove(&session) {
                        let names = close(session, call);
                        wav_names.entry(session).or_default().extend(names);
                    }
                    if let Some((path, mut metadata)) = metadata {
                        add_wav_names(&mut metadata, wav_names.remove(&session));
                        write_metadata(session, &path, &metadata, errors);
                    }
                }
            },
        }
    }
}

fn add_wav_names(metadata: &mut serde_json::Value, names: Option<Vec<String>>) {
    if let (serde_json::Value::Object(fields), Some(names)) = (metadata, names)
        && !names.is_empty()
    {
        fields.insert("wav".to_owned(), json!(names));
    }
}

/// One recorded call's open files.
struct CallFiles {
    pcap: BufWriter<File>,
    /// With WAV output: the files' path stem, and a track per G.711
    /// stream and direction.
    wav: Option<(PathBuf, Vec<wav::Track>)>,
}

impl CallFiles {
    fn new(pcap: File, wav: Option<PathBuf>) -> Self {
        Self {
            pcap: BufWriter::new(pcap),
            wav: wav.map(|stem| (stem, Vec::new())),
        }
    }

    fn write(&mut self, copy: &PacketCopy, record: &[u8]) -> std::io::Result<()> {
        self.pcap.write_all(record)?;
        if let Some((stem, tracks)) = &mut self.wav {
            wav::feed(stem, tracks, copy)?;
        }
        Ok(())
    }

    /// Flushes the pcap and finishes the WAV files; their names.
    fn finish(mut self) -> std::io::Result<Vec<String>> {
        self.pcap.flush()?;
        let mut names = Vec::new();
        if let Some((_, tracks)) = self.wav {
            for track in tracks {
                names.push(track.finish()?);
            }
        }
        Ok(names)
    }
}

/// G.711 streams as WAV files: the payloads as they are (WAV has µ-law
/// and A-law formats), laid on the stream's RTP clock, a gap (loss, a
/// pause of the sender) filled with silence up to 10 s.
mod wav {
    use std::fs::File;
    use std::io::{BufWriter, Seek, SeekFrom, Write};
    use std::path::{Path, PathBuf};

    use baton_relay::Party;
    use baton_relay::core::record::PacketCopy;

    /// Longest gap filled with silence, in samples (10 s at 8 kHz).
    const MAX_GAP: u32 = 80_000;
    /// Bytes of the header: RIFF, `fmt ` (18), `fact`, `data`.
    const HEADER: usize = 58;

    /// One direction of one stream.
    pub struct Track {
        stream: u16,
        toward: Party,
        /// The RTP payload type: 0 (PCMU) or 8 (PCMA).
        law: u8,
        file: BufWriter<File>,
        path: PathBuf,
        next_ts: Option<u32>,
        samples: u32,
    }

    impl Track {
        /// Writes the sizes into the header; the file's name.
        pub fn finish(mut self) -> std::io::Result<String> {
            self.file.flush()?;
            let file = self.file.get_mut();
            let data = self.samples;
            for (at, value) in [(4, 50u32.saturating_add(data)), (46, data), (54, data)] {
                file.seek(SeekFrom::Start(at))?;
                file.write_all(&value.to_le_bytes())?;
            }
            file.flush()?;
            Ok(self
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default())
        }
    }

    fn header(law: u8) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[0..4].copy_from_slice(b"RIFF");
        h[8..12].copy_from_slice(b"WAVE");
        h[12..16].copy_from_slice(b"fmt ");
        h[16..20].copy_from_slice(&18u32.to_le_bytes());
        // WAVE_FORMAT_MULAW (7) or WAVE_FORMAT_ALAW (6), mono, 8 kHz,
        // 8 bits a sample.
        h[20..22].copy_from_slice(&(if law == 0 { 7u16 } else { 6 }).to_le_bytes());
        h[22..24].copy_from_slice(&1u16.to_le_bytes());
        h[24..28].copy_from_slice(&8000u32.to_le_bytes());
        h[28..32].copy_from_slice(&8000u32.to_le_bytes());
        h[32..34].copy_from_slice(&1u16.to_le_bytes());
        h[34..36].copy_from_slice(&8u16.to_le_bytes());
        h[38..42].copy_from_slice(b"fact");
        h[42..46].copy_from_slice(&4u32.to_le_bytes());
        h[50..54].copy_from_slice(b"data");
        h
    }

    /// The G.711 payload of an RTP packet, if it is one: (payload type,
    /// timestamp, payload).
    fn g711(packet: &[u8]) -> Option<(u8, u32, &[u8])> {
        let first = *packet.first()?;
        if first >> 6 != 2 {
            return None;
        }
        let pt = packet.get(1)? & 0x7f;
        if pt != 0 && pt != 8 {
            return None;
        }
        let ts = u32::from_be_bytes(packet.get(4..8)?.try_into().ok()?);
        let mut start = 12 + 4 * usize::from(first & 0x0f);
        if first & 0x10 != 0 {
            let words = u16::from_be_bytes(packet.get(start + 2..start + 4)?.try_into().ok()?);
            start += 4 + 4 * usize::from(words);
        }
        let padding = if first & 0x20 != 0 {
            usize::from(*packet.last()?)
        } else {
            0
        };
        let end = packet.len().checked_sub(padding)?;
        Some((pt, ts, packet.get(start..end)?))
    }

    /// Adds a copy to its track (opened on the first G.711 packet).
    pub fn feed(stem: &Path, tracks: &mut Vec<Track>, copy: &PacketCopy) -> std::io::Result<()> {
        if usize::from(copy.len) != copy.bytes().len() {
            return Ok(()); // cut: longer than any G.711 packet
        }
        let Some((pt, ts, payload)) = g711(copy.bytes()) else {
            return Ok(());
        };
        let at = match tracks
            .iter()
            .position(|t| t.stream == copy.stream && t.toward == copy.toward)
        {
            Some(at) => at,
            None => {
                let side = match copy.toward {
                    Party::Remote => "to-remote",
                    Party::User => "to-user",
                };
                let mut name = stem.as_os_str().to_owned();
                name.push(format!("-{}-{side}.wav", copy.stream));
                let path = PathBuf::from(name);
                let mut file = BufWriter::new(File::create(&path)?);
                file.write_all(&header(pt))?;
                tracks.push(Track {
                    stream: copy.stream,
                    toward: copy.toward,
                    law: pt,
                    file,
                    path,
                    next_ts: None,
                    samples: 0,
                });
                tracks.len() - 1
            }
        };
        let track = &mut tracks[at];
        if pt != track.law {
            return Ok(()); // the other law mid-stream: not in this file
        }
        if let Some(next) = track.next_ts {
            let ahead = ts.wrapping_sub(next);
            if ahead > u32::MAX / 2 {
                return Ok(()); // late, or a repeat
            }
            if ahead > 0 && ahead <= MAX_GAP {
                let silence = if pt == 0 { 0xFF } else { 0xD5 };
                let fill = vec![silence; usize::try_from(ahead).unwrap_or(0)];
                track.file.write_all(&fill)?;
                track.samples = track.samples.saturating_add(ahead);
            }
        }
        track.file.write_all(payload)?;
        let n = u32::try_from(payload.len()).unwrap_or(0);
        track.samples = track.samples.saturating_add(n);
        track.next_ts = Some(ts.wrapping_add(n));
        Ok(())
    }
}

fn write_metadata(
    session: SessionId,
    path: &Path,
    metadata: &serde_json::Value,
    errors: &AtomicU64,
) {
    let text = serde_json::to_vec_pretty(metadata).unwrap_or_default();
    match std::fs::write(path, text) {
        Ok(()) => info!(%session, path = %path.display(), "recording finished"),
        Err(e) => {
            error!(%session, path = %path.display(), "recording: cannot write the metadata: {e}");
            errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_recording_of_a_session_never_overwrites_the_first() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let (_, first) = create_new(dir.path(), "call-1").expect("first");
        let (_, second) = create_new(dir.path(), "call-1").expect("second");
        assert_ne!(first, second);
        assert!(second.to_string_lossy().ends_with("call-1-2.pcap"));
        let mode = std::fs::metadata(&first)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o007, 0, "not readable by others: {mode:o}");
    }

    #[test]
    fn call_ids_become_safe_file_names() {
        assert_eq!(
            file_name("a84b4c76e66710@pc33.atlanta.example.com"),
            "a84b4c76e66710_pc33.atlanta.example.com"
        );
        assert_eq!(file_name("../../etc/passwd"), "call.._.._etc_passwd");
        assert_eq!(file_name(""), "call");
        assert_eq!(file_name(&"x".repeat(300)).len(), 64);
    }

    #[test]
    fn a_record_is_a_udp_datagram_in_an_ipv4_packet() {
        let mut copy = PacketCopy {
            session: SessionId(1),
            stream: 0,
            toward: Party::Remote,
            at: Instant::now(),
            len: 4,
            data: [0; baton_relay::core::record::SNAPLEN],
        };
        copy.data[..4].copy_from_slice(&[0x80, 0, 0, 1]);
        let mut out = Vec::new();
        pcap_record(
            &copy,
            UNIX_EPOCH + Duration::from_micros(1_500_000),
            &mut out,
        );
        assert_eq!(out.len(), 16 + 20 + 8 + 4);
        assert_eq!(&out[0..8], &[1, 0, 0, 0, 0x20, 0xa1, 0x07, 0]);
        let ip_header = &out[16..36];
        assert_eq!(ip_header[0], 0x45);
        // A header with its checksum sums to 0xffff.
        let sum: u32 = ip_header
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        assert_eq!((sum & 0xffff) + (sum >> 16), 0xffff);
        assert_eq!(&out[36..38], &pcap_port(0, Party::Remote).to_be_bytes());
        assert_eq!(&out[44..], &[0x80, 0, 0, 1]);
    }
}

#[cfg(test)]
mod wav_tests {
    use super::*;

    fn copy(seq: u16, ts: u32) -> PacketCopy {
        let mut copy = PacketCopy {
            session: SessionId(1),
            stream: 0,
            toward: Party::Remote,
            at: Instant::now(),
            len: 172,
            data: [0; baton_relay::core::record::SNAPLEN],
        };
        copy.data[0] = 0x80;
        copy.data[1] = 8;
        copy.data[2..4].copy_from_slice(&seq.to_be_bytes());
        copy.data[4..8].copy_from_slice(&ts.to_be_bytes());
        copy.data[12..172].fill(0x55);
        copy
    }

    #[test]
    fn g711_streams_become_wav_files_with_their_gaps_filled() {
        let dir = tempfile::tempdir().expect("dir");
        let stem = dir.path().join("call-1");
        let mut tracks = Vec::new();
        wav::feed(&stem, &mut tracks, &copy(1, 1000)).expect("feed");
        wav::feed(&stem, &mut tracks, &copy(2, 1160)).expect("feed");
        // One packet lost: its 160 samples come back as silence.
        wav::feed(&stem, &mut tracks, &copy(4, 1480)).expect("feed");
        // A late packet is not written again.
        wav::feed(&stem, &mut tracks, &copy(3, 1320)).expect("feed");
        assert_eq!(tracks.len(), 1);
        let name = tracks.pop().expect("track").finish().expect("finish");
        let wav = std::fs::read(dir.path().join(&name)).expect("wav");
        assert_eq!(name, "call-1-0-to-remote.wav");
        assert_eq!(u16::from_le_bytes([wav[20], wav[21]]), 6, "A-law");
        let data = u32::from_le_bytes([wav[54], wav[55], wav[56], wav[57]]) as usize;
        assert_eq!(data, 4 * 160);
        assert_eq!(wav.len(), 58 + data);
        assert!(
            wav[58 + 320..58 + 480].iter().all(|&b| b == 0xD5),
            "silence"
        );
    }
}
