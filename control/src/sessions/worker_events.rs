//! What the media workers report, applied to the registry and published.
//! An event about a session is applied under the session's lock, after any
//! command running on it, so a command never sees a record change under it.

use std::sync::atomic::Ordering;

use baton_proto::v1;
use baton_relay::core::session::{EndReason, SessionReport};
use baton_relay::{LegId, SessionId, WorkerEvent, WorkerId};
use tokio::sync::mpsc;
use tracing::{error, info};

use super::registry::RecordState;
use super::{Sessions, session_info};

/// End reason of sessions lost with a failed worker.
pub(super) const WORKER_FAILED: &str = "worker_failed";

impl Sessions {
    /// Turns worker events into registry changes and published events,
    /// until the workers stop.
    pub async fn handle_worker_events(&self, mut events: mpsc::Receiver<WorkerEvent>) {
        while let Some(event) = events.recv().await {
            match event {
                WorkerEvent::SessionEnded { id, reason, report } => {
                    self.session_timed_out(id, reason, &report).await;
                }
                WorkerEvent::SessionRemoved { id, report } => {
                    // A delete gave up waiting, then the worker removed the
                    // session: the record goes too.
                    let _guard = self.lock_if_known(id).await;
                    if let Some(record) = self.registry().remove(id) {
                        self.session_ended(&record, "deleted", Some(&report));
                    }
                }
                WorkerEvent::TransferCompleted {
                    id, transfer, gap, ..
                } => {
                    let _guard = self.lock_if_known(id).await;
                    self.transfer_completed(id, transfer, gap).await;
                }
                WorkerEvent::TransferTimedOut { id, transfer } => {
                    let _guard = self.lock_if_known(id).await;
                    self.transfer_failed(id, transfer, "timeout");
                }
                WorkerEvent::WorkerFailed { worker, reason } => {
                    self.worker_failed(worker, &reason);
                }
                WorkerEvent::DtlsConnected {
                    id,
                    stream,
                    leg,
                    suite,
                } => {
                    self.telemetry.webrtc_dtls_connected.inc();
                    self.webrtc_event(id, stream.0, leg, "dtls_connected", suite.name());
                }
                WorkerEvent::DtlsFailed {
                    id,
                    stream,
                    leg,
                    reason,
                } => {
                    self.telemetry.webrtc_dtls_failed.inc();
                    info!(session = %id, stream = stream.0, %leg, "DTLS failed: {reason}");
                    self.webrtc_event(id, stream.0, leg, "dtls_failed", &reason);
                }
                WorkerEvent::ConsentExpired {
                    id, stream, leg, ..
                } => {
                    self.telemetry.webrtc_consent_expired.inc();
                    self.webrtc_event(id, stream.0, leg, "consent_expired", "");
                }
                WorkerEvent::SourceLatched {
                    id,
                    stream,
                    latched,
                } => {
                    self.events
                        .publish(v1::event::Kind::SourceLatched(v1::SourceLatched {
                            session: id.to_string(),
                            stream: stream.0 as u32,
                            leg: latched.party.name().to_owned(),
                            component: latched.component.name().to_owned(),
                            address: latched.addr.to_string(),
                            relearned: latched.relearned,
                        }));
                }
            }
        }
        info!("media workers stopped");
    }

    fn webrtc_event(&self, id: SessionId, stream: usize, leg: LegId, what: &str, detail: &str) {
        // The remote's leg is slot 1 for life; every other slot faces the
        // user (the device, a transfer's new device).
        let party = if leg == LegId::REMOTE {
            "remote"
        } else {
            "user"
        };
        self.events
            .publish(v1::event::Kind::WebrtcLeg(v1::WebRtcLeg {
                session: id.to_string(),
                stream: stream as u32,
                leg: party.to_owned(),
                what: what.to_owned(),
                detail: detail.to_owned(),
            }));
    }

    /// The session's lock, if the session is still known.
    async fn lock_if_known(&self, id: SessionId) -> Option<super::SessionGuard> {
        self.lock_id(id).await.ok().map(|(guard, _)| guard)
    }

    /// A session ended on its worker by a timeout.
    async fn session_timed_out(&self, id: SessionId, reason: EndReason, report: &SessionReport) {
        let _guard = self.lock_if_known(id).await;
        let Some(record) = self.registry().remove(id) else {
            return; // deleted at the same moment: counted there
        };
        self.timed_out.fetch_add(1, Ordering::Relaxed);
        self.session_ended(&record, reason.name(), Some(report));
        self.events
            .publish(v1::event::Kind::SessionTimedOut(v1::SessionTimedOut {
                session: Some(session_info(&record, Some(report))),
                reason: reason.name().to_owned(),
            }));
    }

    /// A worker failed (a bug): its sessions are lost. End them as a
    /// timeout would (an event per session, so the signalling side can hang
    /// up the calls), and start a new worker in its place. Sessions still
    /// being created fail their create instead.
    fn worker_failed(&self, worker: WorkerId, reason: &str) {
        let lost = self.registry().remove_worker(worker);
        error!(
            %worker,
            reason,
            sessions_lost = lost.len(),
            "media worker failed; its sessions are lost, the other workers' are not"
        );
        // The new worker first: by the time anyone hears of the lost
        // sessions, new calls can be placed again.
        match self.dataplane.restart_worker(worker) {
            Ok(()) => info!(%worker, "media worker restarted"),
            Err(e) => {
                error!(
                    %worker,
                    "cannot restart the media worker, new sessions go to the others: {e}"
                );
                if let Some(down) = self.registry().down.get_mut(worker.0) {
                    *down = true;
                }
            }
        }
        self.telemetry.worker_failures.inc();
        for record in lost.into_iter().filter(|r| r.state == RecordState::Live) {
            self.session_ended(&record, WORKER_FAILED, None);
            self.events
                .publish(v1::event::Kind::SessionTimedOut(v1::SessionTimedOut {
                    session: Some(session_info(&record, None)),
                    reason: WORKER_FAILED.to_owned(),
                }));
        }
    }
}
