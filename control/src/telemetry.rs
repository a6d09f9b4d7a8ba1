//! What the control plane counts as things happen ([`Telemetry`]), and the
//! Prometheus registry that renders it with a snapshot of the media workers
//! and the port pool taken at each scrape ([`Exporter`]; workers count for
//! themselves and are asked only then, so the packet path never touches a
//! shared counter). The HTTP endpoint is
//! [`metrics_server`](crate::metrics_server).

use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of `baton_control_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The command, e.g. "create_session".
    pub command: String,
    /// The result: "OK" or a gRPC status name.
    pub code: String,
}

/// A `reason` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why.
    pub reason: String,
}

/// What the control plane counts as it happens. Cheap to clone (shared
/// handles).
#[derive(Debug, Clone)]
pub struct Telemetry {
    /// Control requests by command and result.
    pub requests: Family<RequestLabels, Counter>,
    /// Sessions created.
    pub sessions_created: Counter,
    /// Sessions ended, by reason.
    pub sessions_ended: Family<ReasonLabels, Counter>,
    /// Transfers opened.
    pub transfers_started: Counter,
    /// Transfers switched to the new device.
    pub transfers_completed: Counter,
    /// Transfers opened that did not complete, by reason (cancelled,
    /// timeout, session_ended).
    pub transfers_failed: Family<ReasonLabels, Counter>,
    /// Transfers refused (never opened).
    pub transfers_refused: Counter,
    /// Media gap at the switch, in seconds.
    pub transfer_gap: Histogram,
    /// ng requests by command and result.
    pub ng_requests: Family<RequestLabels, Counter>,
    /// Media workers that failed (and were restarted).
    pub worker_failures: Counter,
    /// WebRTC legs whose DTLS handshake completed.
    pub webrtc_dtls_connected: Counter,
    /// WebRTC legs whose DTLS handshake failed.
    pub webrtc_dtls_failed: Counter,
    /// WebRTC legs whose ICE consent expired.
    pub webrtc_consent_expired: Counter,
    /// Requests, connections and datagrams refused or dropped at the edge
    /// (limits, unauthenticated clients, sources not allowed), by reason.
    pub refusals: Family<ReasonLabels, Counter>,
}

impl Default for Telemetry {
    fn default() -> Self {
        let telemetry = Self {
            requests: Family::default(),
            sessions_created: Counter::default(),
            sessions_ended: Family::default(),
            transfers_started: Counter::default(),
            transfers_completed: Counter::default(),
            transfers_failed: Family::default(),
            transfers_refused: Counter::default(),
            // 0.1 ms to 1 s: the gap is the time between the old device's
            // last packet and the new one's first.
            transfer_gap: Histogram::new([
                0.0001, 0.0005, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
            ng_requests: Family::default(),
            worker_failures: Counter::default(),
            webrtc_dtls_connected: Counter::default(),
            webrtc_dtls_failed: Counter::default(),
            webrtc_consent_expired: Counter::default(),
            refusals: Family::default(),
        };
        telemetry.zero_known_labels();
        telemetry
    }
}

impl Telemetry {
    /// Creates every labelled series whose label values are known at zero,
    /// so dashboards and alerts can name them before the first event.
    fn zero_known_labels(&self) {
        let reason = |reason: &str| ReasonLabels {
            reason: reason.to_owned(),
        };
        for r in SESSION_END_REASONS {
            let _ = self.sessions_ended.get_or_create(&reason(r));
        }
        for r in TRANSFER_FAILURE_REASONS {
            let _ = self.transfers_failed.get_or_create(&reason(r));
        }
        for r in REFUSAL_REASONS {
            let _ = self.refusals.get_or_create(&reason(r));
        }
        for command in NG_COMMANDS {
            for code in ["ok", "error"] {
                let _ = self.ng_requests.get_or_create(&RequestLabels {
                    command: (*command).to_owned(),
                    code: code.to_owned(),
                });
            }
        }
        for command in CONTROL_COMMANDS {
            let _ = self.requests.get_or_create(&RequestLabels {
                command: (*command).to_owned(),
                code: "OK".to_owned(),
            });
        }
    }

    /// Counts a finished control request.
    pub fn request(&self, command: &str, code: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                command: command.to_owned(),
                code: code.to_owned(),
            })
            .inc();
    }

    /// Counts a session's end.
    pub fn session_ended(&self, reason: &str) {
        self.sessions_ended
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Sessions ended, every reason.
    pub fn sessions_ended_total(&self) -> u64 {
        SESSION_END_REASONS
            .iter()
            .map(|reason| {
                self.sessions_ended
                    .get_or_create(&ReasonLabels {
                        reason: (*reason).to_owned(),
                    })
                    .get()
            })
            .sum()
    }

    /// Transfers opened that failed, every reason.
    pub fn transfers_failed_total(&self) -> u64 {
        TRANSFER_FAILURE_REASONS
            .iter()
            .map(|reason| {
                self.transfers_failed
                    .get_or_create(&ReasonLabels {
                        reason: (*reason).to_owned(),
                    })
                    .get()
            })
            .sum()
    }

    /// Counts a refusal at the edge (see [`Telemetry::refusals`]).
    pub fn refused(&self, reason: &str) {
        self.refusals
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Refusals so far, by reason (for `get_stats`).
    pub fn refusal_counts(&self) -> std::collections::BTreeMap<String, u64> {
        let mut counts = std::collections::BTreeMap::new();
        for reason in REFUSAL_REASONS {
            let labels = ReasonLabels {
                reason: (*reason).to_owned(),
            };
            let value = self.refusals.get_or_create(&labels).get();
            if value > 0 {
                counts.insert((*reason).to_owned(), value);
            }
        }
        counts
    }

    /// Counts a transfer that did not complete.
    pub fn transfer_failed(&self, reason: &str) {
        self.transfers_failed
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

/// The ng commands counted by name (any other is counted as "other").
pub const NG_COMMANDS: &[&str] = &[
    "ping",
    "offer",
    "answer",
    "delete",
    "query",
    "list",
    "block media",
    "unblock media",
    "silence media",
    "unsilence media",
    "block DTMF",
    "unblock DTMF",
    "statistics",
    "start recording",
    "stop recording",
    "pause recording",
    "other",
];

/// The control commands, as `baton_control_requests_total` names them.
pub const CONTROL_COMMANDS: &[&str] = &[
    "authenticate",
    "ping",
    "get_stats",
    "subscribe",
    "audit",
    "create_session",
    "update_session",
    "delete_session",
    "get_session",
    "list_sessions",
    "register_device",
    "unregister_device",
    "list_bindings",
    "transfer",
    "commit_transfer",
    "cancel_transfer",
    "drain",
    "record",
    "takeover",
];

/// Every reason a session ends with.
pub const SESSION_END_REASONS: &[&str] = &[
    "deleted",
    "media_timeout",
    "setup_timeout",
    "shutdown",
    "drain_deadline",
    "worker_failed",
];

/// Every reason an opened transfer fails with.
pub const TRANSFER_FAILURE_REASONS: &[&str] = &["cancelled", "timeout", "session_ended"];

/// Every reason [`Telemetry::refused`] is called with, for `get_stats`.
pub const REFUSAL_REASONS: &[&str] = &[
    "control_connection_limit",
    "control_auth_timeout",
    "control_unauthenticated",
    "control_wrong_token",
    "metrics_connection_limit",
    "metrics_timeout",
    "ng_source_not_allowed",
    "ng_malformed",
    "ng_reply_too_large",
    "ng_cache_evicted",
    "ng_call_busy",
    "ng_not_implemented",
    "sdp_too_large",
    "sdp_too_many_media",
    "sdp_too_many_formats",
    "sdp_too_many_attributes",
    "transfer_source_unknown",
    "draining",
];

/// One worker's numbers at the last scrape.
#[derive(Debug, Clone, Default)]
pub struct WorkerSnapshot {
    /// Worker number.
    pub index: usize,
    /// Sessions pinned to it.
    pub sessions: u64,
    /// Datagrams sent, by destination side (user, remote).
    pub packets_to: [u64; 2],
    /// Bytes sent, by destination side (user, remote).
    pub bytes_to: [u64; 2],
    /// Drops by reason name.
    pub drops: Vec<(&'static str, u64)>,
    /// Latency histogram: (bound in seconds, cumulative count).
    pub latency_buckets: Vec<(f64, u64)>,
    /// Latency samples.
    pub latency_count: u64,
    /// Sum of latency samples in seconds.
    pub latency_sum: f64,
    /// CPU seconds the worker thread used.
    pub cpu_seconds: Option<f64>,
    /// Events the control plane could not take.
    pub events_lost: u64,
}

/// What is read at each scrape.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Sessions now.
    pub sessions: u64,
    /// Control connections now.
    pub control_connections: u64,
    /// Event subscribers now.
    pub subscribers: u64,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// The relay is draining.
    pub draining: bool,
    /// The session limit in force.
    pub max_sessions: u64,
    /// Per worker.
    pub workers: Vec<WorkerSnapshot>,
    /// Per media IP: (interface, ip, free pairs, total pairs).
    pub ports: Vec<(String, String, u64, u64)>,
    /// Call recording, when on: copies dropped (queue full), files given
    /// up (write errors).
    pub recording: Option<(u64, u64)>,
    /// High availability, when on.
    pub ha: Option<HaSnapshot>,
    /// The kernel fast path.
    pub kernel: baton_proto::v1::KernelForwarding,
    /// The user-space fast path.
    pub user_fast_path: baton_proto::v1::UserFastPath,
}

/// High availability's figures for `/metrics`: the role as a number
/// (0 standby, 1 taking over, 2 active, 3 fenced), and what `stats` shows.
#[derive(Debug, Clone, Default)]
pub struct HaSnapshot {
    /// The role's number.
    pub role: u64,
    /// The figures.
    pub figures: baton_proto::v1::HighAvailability,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabels {
    interface: String,
    ip: String,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// A histogram whose buckets were counted elsewhere (by the workers).
#[derive(Debug)]
struct CountedHistogram<'a> {
    sum: f64,
    count: u64,
    buckets: &'a [(f64, u64)],
}

impl EncodeMetric for CountedHistogram<'_> {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.sum,
            self.count,
            self.buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Encodes the last snapshot at each scrape.
#[derive(Debug, Default)]
struct SnapshotCollector {
    last: Arc<Mutex<Snapshot>>,
}

fn counter(value: u64) -> ConstCounter<u64> {
    ConstCounter::new(value)
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let gauge = |encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64| {
            let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let m = encoder.encode_descriptor(name, help, None, g.metric_type())?;
            g.encode(m)
        };
        let version = ConstGauge::new(1i64);
        {
            let mut m = encoder.encode_descriptor(
                "baton_build_info",
                "The running version (always 1)",
                None,
                version.metric_type(),
            )?;
            version.encode(m.encode_family(&VersionLabels {
                version: crate::VERSION,
            })?)?;
        }
        gauge(
            &mut encoder,
            "baton_sessions",
            "Sessions on the relay now",
            s.sessions,
        )?;
        gauge(
            &mut encoder,
            "baton_max_sessions",
            "The session limit in force (max-sessions); more are refused",
            s.max_sessions,
        )?;
        gauge(
            &mut encoder,
            "baton_draining",
            "1 while the relay drains (refuses new sessions, exits when the last one ends)",
            u64::from(s.draining),
        )?;
        gauge(
            &mut encoder,
            "baton_control_connections",
            "Control connections open now",
            s.control_connections,
        )?;
        gauge(
            &mut encoder,
            "baton_event_subscribers",
            "Control connections subscribed to events now",
            s.subscribers,
        )?;
        gauge(
            &mut encoder,
            "baton_uptime_seconds",
            "Seconds since the relay started",
            s.uptime_seconds,
        )?;
        {
            // Zero while recording is off: the series is always there.
            let (dropped, errors) = s.recording.unwrap_or((0, 0));
            for (name, help, value) in [
                (
                    "baton_recording_dropped",
                    "Copies of recorded calls' packets dropped because the writer's queue was full (the media went on)",
                    dropped,
                ),
                (
                    "baton_recording_errors",
                    "Recording files given up because they could not be written",
                    errors,
                ),
            ] {
                let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                counter(value).encode(m)?;
            }
        }

        if let Some(ha) = &s.ha {
            for (name, help, value) in [
                (
                    "baton_ha_role",
                    "This relay's part in its HA pair: 0 standby, 1 taking over, 2 active, 3 fenced (another relay took the heartbeat key)",
                    ha.role,
                ),
                (
                    "baton_redis_connected",
                    "1 when the last write to Redis went through",
                    u64::from(ha.figures.redis_connected),
                ),
                (
                    "baton_ha_standby_sessions",
                    "On a standby: the active's sessions held in memory",
                    ha.figures.standby_sessions,
                ),
                (
                    "baton_ha_last_takeover_milliseconds",
                    "How long the last takeover took, from deciding to the last session forwarding",
                    ha.figures.last_takeover_ms,
                ),
            ] {
                gauge(&mut encoder, name, help, value)?;
            }
            for (name, help, value) in [
                (
                    "baton_redis_writes",
                    "Redis commands acknowledged",
                    ha.figures.redis_writes,
                ),
                (
                    "baton_redis_write_drops",
                    "Writes to Redis dropped (full queue, failed batch); a full re-sync follows",
                    ha.figures.redis_write_drops,
                ),
                (
                    "baton_redis_errors",
                    "Write batches Redis failed",
                    ha.figures.redis_errors,
                ),
                (
                    "baton_ha_takeovers",
                    "Takeovers of stored calls",
                    ha.figures.takeovers,
                ),
                (
                    "baton_ha_sessions_resumed",
                    "Sessions resumed from Redis",
                    ha.figures.sessions_resumed,
                ),
                (
                    "baton_ha_resume_failures",
                    "Stored sessions that could not be resumed (unreadable, ports taken)",
                    ha.figures.resume_failures,
                ),
            ] {
                let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                counter(value).encode(m)?;
            }
        }

        {
            let k = &s.kernel;
            gauge(
                &mut encoder,
                "baton_kernel_forwarding",
                "The kernel fast path: 0 off, 1 on, 2 asked for but unavailable (see stats)",
                match k.status.as_str() {
                    "on" => 1,
                    "unavailable" => 2,
                    _ => 0,
                },
            )?;
            gauge(
                &mut encoder,
                "baton_kernel_routes",
                "Stream directions the kernel forwards now",
                u64::from(k.routes),
            )?;
            for (name, help, value) in [
                (
                    "baton_kernel_routes_installed",
                    "Kernel routes installed",
                    k.routes_installed,
                ),
                (
                    "baton_kernel_routes_ended",
                    "Kernel routes ended (a change, an unusual packet, the call's end)",
                    k.routes_ended,
                ),
                (
                    "baton_kernel_forwarded_packets",
                    "Packets the kernel forwarded (also in baton_packets_forwarded)",
                    k.packets,
                ),
                (
                    "baton_kernel_forwarded_bytes",
                    "Bytes the kernel forwarded",
                    k.bytes,
                ),
                (
                    "baton_kernel_errors",
                    "Kernel map operations that failed",
                    k.errors,
                ),
            ] {
                let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                counter(value).encode(m)?;
            }
            let mut m = encoder.encode_descriptor(
                "baton_kernel_handed_up",
                "Packets of a kernel route the program handed up to the relay, by reason",
                None,
                MetricType::Counter,
            )?;
            for reason in ["not_newest", "no_next_hop", "other"] {
                let value = k.handed_up.get(reason).copied().unwrap_or(0);
                counter(value).encode(m.encode_family(&DropLabels { reason })?)?;
            }
        }

        {
            let u = &s.user_fast_path;
            gauge(
                &mut encoder,
                "baton_user_fast_path_lanes",
                "Stream directions on a lane (the user-space fast path) now",
                u64::from(u.lanes),
            )?;
            let m = encoder.encode_descriptor(
                "baton_user_fast_path_packets",
                "Packets lanes forwarded (also in baton_packets_forwarded)",
                None,
                MetricType::Counter,
            )?;
            counter(u.packets).encode(m)?;
        }

        let total = |f: &dyn Fn(&WorkerSnapshot) -> u64| s.workers.iter().map(f).sum::<u64>();
        {
            let mut m = encoder.encode_descriptor(
                "baton_packets_forwarded",
                "Datagrams sent by the relay, by the side they went to",
                None,
                MetricType::Counter,
            )?;
            for (index, direction) in [(0, "to_user"), (1, "to_remote")] {
                counter(total(&|w| w.packets_to[index]))
                    .encode(m.encode_family(&DirectionLabels { direction })?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "baton_forwarded",
                "Bytes sent by the relay, by the side they went to",
                Some(&prometheus_client::registry::Unit::Bytes),
                MetricType::Counter,
            )?;
            for (index, direction) in [(0, "to_user"), (1, "to_remote")] {
                counter(total(&|w| w.bytes_to[index]))
                    .encode(m.encode_family(&DirectionLabels { direction })?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "baton_packets_dropped",
                "Datagrams not forwarded, by reason",
                None,
                MetricType::Counter,
            )?;
            let reasons: Vec<&'static str> = s
                .workers
                .first()
                .map(|w| w.drops.iter().map(|(r, _)| *r).collect())
                .unwrap_or_default();
            for reason in reasons {
                let value = total(&|w| {
                    w.drops
                        .iter()
                        .find(|(r, _)| *r == reason)
                        .map_or(0, |(_, n)| *n)
                });
                counter(value).encode(m.encode_family(&DropLabels { reason })?)?;
            }
        }
        {
            // Merge the workers' histograms (same bounds).
            let mut buckets: Vec<(f64, u64)> = s
                .workers
                .first()
                .map(|w| w.latency_buckets.iter().map(|(b, _)| (*b, 0)).collect())
                .unwrap_or_default();
            for w in &s.workers {
                for (slot, (_, n)) in buckets.iter_mut().zip(&w.latency_buckets) {
                    slot.1 += n;
                }
            }
            let histogram = CountedHistogram {
                sum: s.workers.iter().map(|w| w.latency_sum).sum(),
                count: total(&|w| w.latency_count),
                buckets: &buckets,
            };
            let m = encoder.encode_descriptor(
                "baton_relay_latency",
                "Time from the worker waking for a datagram to handing it to the kernel (its wait in the socket queue before that is not in it), sampled one batch in 16",
                Some(&prometheus_client::registry::Unit::Seconds),
                MetricType::Histogram,
            )?;
            histogram.encode(m)?;
        }
        {
            let mut m = encoder.encode_descriptor(
                "baton_worker_sessions",
                "Sessions pinned to each media worker",
                None,
                MetricType::Gauge,
            )?;
            for w in &s.workers {
                ConstGauge::new(i64::try_from(w.sessions).unwrap_or(i64::MAX)).encode(
                    m.encode_family(&WorkerLabels {
                        worker: w.index.to_string(),
                    })?,
                )?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "baton_worker_packets_forwarded",
                "Datagrams each media worker sent",
                None,
                MetricType::Counter,
            )?;
            for w in &s.workers {
                counter(w.packets_to[0] + w.packets_to[1]).encode(m.encode_family(
                    &WorkerLabels {
                        worker: w.index.to_string(),
                    },
                )?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "baton_worker_cpu",
                "CPU time each media worker thread used (user + system)",
                Some(&prometheus_client::registry::Unit::Seconds),
                MetricType::Counter,
            )?;
            for w in &s.workers {
                if let Some(cpu) = w.cpu_seconds {
                    ConstCounter::new(cpu).encode(m.encode_family(&WorkerLabels {
                        worker: w.index.to_string(),
                    })?)?;
                }
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "baton_worker_events_lost",
                "Worker events the control plane's queue could not take",
                None,
                MetricType::Counter,
            )?;
            for w in &s.workers {
                counter(w.events_lost).encode(m.encode_family(&WorkerLabels {
                    worker: w.index.to_string(),
                })?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "baton_port_pairs",
                "Relay port pairs per interface and media IP, free or in use",
                None,
                MetricType::Gauge,
            )?;
            for (interface, ip, free, total) in &s.ports {
                for (state, value) in [("free", *free), ("in_use", total.saturating_sub(*free))] {
                    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(
                        m.encode_family(&PortLabels {
                            interface: interface.clone(),
                            ip: ip.clone(),
                            state,
                        })?,
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// The registry behind `/metrics`.
#[derive(Debug)]
pub struct Exporter {
    registry: Registry,
    last: Arc<Mutex<Snapshot>>,
}

impl Exporter {
    /// A registry over `telemetry` and the scrape-time snapshot.
    pub fn new(telemetry: &Telemetry) -> Self {
        let mut registry = Registry::default();
        let t = telemetry.clone();
        registry.register(
            "baton_control_requests",
            "Control requests answered, by command and result",
            t.requests,
        );
        registry.register(
            "baton_ng_requests",
            "ng protocol requests answered, by command and result",
            t.ng_requests,
        );
        registry.register(
            "baton_sessions_created",
            "Sessions created",
            t.sessions_created,
        );
        registry.register(
            "baton_sessions_ended",
            "Sessions ended, by reason (deleted, media_timeout, setup_timeout, worker_failed)",
            t.sessions_ended,
        );
        registry.register(
            "baton_worker_failures",
            "Media worker threads that failed (a bug; their sessions were lost) and were restarted",
            t.worker_failures,
        );
        registry.register(
            "baton_webrtc_dtls_connected",
            "WebRTC legs whose DTLS-SRTP handshake completed (keys in)",
            t.webrtc_dtls_connected,
        );
        registry.register(
            "baton_webrtc_dtls_failed",
            "WebRTC legs whose DTLS-SRTP handshake failed (fingerprint mismatch, timeout, bad records)",
            t.webrtc_dtls_failed,
        );
        registry.register(
            "baton_webrtc_consent_expired",
            "WebRTC legs whose ICE consent expired (no check for 30 s, RFC 7675)",
            t.webrtc_consent_expired,
        );
        registry.register(
            "baton_transfers_started",
            "Transfers opened",
            t.transfers_started,
        );
        registry.register(
            "baton_transfers_completed",
            "Transfers switched to the new device",
            t.transfers_completed,
        );
        registry.register(
            "baton_transfers_failed",
            "Transfers opened that did not complete, by reason (cancelled, timeout, session_ended)",
            t.transfers_failed,
        );
        registry.register(
            "baton_transfers_refused",
            "Transfers refused before opening (not the user's device, no common codec, another open)",
            t.transfers_refused,
        );
        registry.register(
            "baton_refusals",
            "Requests, connections and datagrams refused at the edge, by reason (limits, unauthenticated clients, sources not allowed)",
            t.refusals,
        );
        registry.register_with_unit(
            "baton_transfer_media_gap",
            "Time from the old device's last packet to the new device's first, at a switch",
            prometheus_client::registry::Unit::Seconds,
            t.transfer_gap,
        );
        let last = Arc::new(Mutex::new(Snapshot::default()));
        registry.register_collector(Box::new(SnapshotCollector {
            last: Arc::clone(&last),
        }));
        Self { registry, last }
    }

    /// The metrics as Prometheus text, with `snapshot` as the live part.
    pub fn render(&self, snapshot: Snapshot) -> String {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = snapshot;
        let mut out = String::new();
        match prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry) {
            Ok(()) => out,
            Err(_) => String::from("# encoding failed\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CONTROL_COMMANDS;

    /// The commands of the schema's `oneof command`, by field name.
    fn schema_commands() -> Vec<String> {
        let schema = baton_proto::SCHEMA;
        let start = schema
            .find("oneof command {")
            .expect("the schema has a oneof command");
        let body = &schema[start..];
        let body = &body[..body.find('}').expect("the oneof ends")];
        body.lines()
            .map(str::trim)
            .filter(|line| !line.starts_with("//"))
            .filter_map(|line| {
                // `FooRequest name = N;`
                let mut words = line.split_whitespace();
                let (_, name, equals) = (words.next()?, words.next()?, words.next()?);
                (equals == "=").then(|| name.to_owned())
            })
            .collect()
    }

    #[test]
    fn every_command_of_the_schema_has_its_counters_from_the_start() {
        let commands = schema_commands();
        assert!(commands.len() > 10, "parsed {commands:?}");
        for command in &commands {
            assert!(
                CONTROL_COMMANDS.contains(&command.as_str()),
                "{command} is in the schema but not in CONTROL_COMMANDS"
            );
        }
        for command in CONTROL_COMMANDS {
            assert!(
                commands.iter().any(|c| c == command),
                "{command} is in CONTROL_COMMANDS but not in the schema"
            );
        }
    }
}
