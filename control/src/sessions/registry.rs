//! The session registry: what the control plane knows of each call — its
//! dialog, its user and device, the worker that carries it, what the
//! signalling negotiated, and the signalling side of a transfer. Media
//! facts (peers, counters, which leg is the device, timeouts) are the data
//! plane's and are read from its reports.
//!
//! Every command on a session takes the session's lock for its whole run
//! (create holds it until the worker confirmed), so commands on one session
//! never interleave: a delete that meets a create waits for it, an update
//! never sees a half-created session. The registry's own mutex is held only
//! for lookups and edits, never across a worker round trip.

use std::collections::HashMap;
use std::sync::Arc;

use baton_proto::v1::{self, session_ref::By};
use baton_relay::{Party, SessionId, TransferId, WorkerId};

use crate::sip::negotiation::{NegotiatedStream, PendingSdp, SdpState};
use crate::status::{Status, excerpt};

/// Where a record is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecordState {
    /// Registered, its ports and worker not confirmed yet: found by dialog
    /// (so a concurrent command waits on its lock) but not listed.
    Creating,
    /// Confirmed by its worker.
    Live,
}

/// A transfer open on the worker, not switched yet.
#[derive(Debug, Clone)]
pub(crate) struct OpenTransfer {
    pub id: TransferId,
    /// The new device.
    pub gruu: String,
    /// Its relay addresses, per stream.
    pub local: Vec<v1::Endpoint>,
    /// Per stream: it multiplexes RTCP.
    pub rtcp_mux: Vec<bool>,
    /// Per stream: its payload types against the remote's.
    pub payloads: Vec<Vec<(u8, u8)>>,
    /// Per stream: its transport and keys.
    pub crypto: Vec<crate::sip::crypto::PartyCrypto>,
    /// Per stream: the BUNDLE transport it offered the stream on.
    pub bundles: Vec<Option<crate::sip::negotiation::StreamBundle>>,
    /// Its offer and the answer it got, if it came as SDP.
    pub sdp: Option<PendingSdp>,
    /// The answer for the new device, until the ng front end reads it.
    pub ng_answer: Option<String>,
    /// The new device's own dialog (ng `new-call-id`, `new-from-tag`): an
    /// ng `delete` of it cancels the transfer.
    pub ng_dialog: Option<(String, String)>,
    /// The named interface the new device's legs are on.
    pub interface: String,
}

/// A transfer switched by a commit: the registry shows the new device
/// already; the worker's report of its first packet (the media gap) is
/// still to come.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct CommittedTransfer {
    pub id: TransferId,
    pub gruu: String,
    pub previous_gruu: String,
}

/// Branches of a forked call kept per session: more to-tags answering one
/// offer than any real fork has (a proxy forks to a user's devices).
pub(crate) const MAX_BRANCHES: usize = 16;

/// One answered branch of the call: its to-tag (RFC 3261 §12.1).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Branch {
    pub to_tag: String,
}

/// One session.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub id: SessionId,
    pub call_id: String,
    pub from_tag: String,
    pub to_tag: String,
    pub aor: String,
    pub gruu: String,
    pub worker: WorkerId,
    pub created_unix_ms: u64,
    pub state: RecordState,
    /// Held by the command running on this session.
    pub lock: Arc<tokio::sync::Mutex<()>>,
    pub streams: Vec<NegotiatedStream>,
    /// Offer/answer state, once a body went through the session.
    pub sdp: Option<SdpState>,
    /// Which party created the session (sent the first body): the user's
    /// device on calls from the user, the remote party on calls to them.
    /// The dialog's from-tag is that party's.
    pub offerer: Party,
    pub open_transfer: Option<OpenTransfer>,
    pub committed_transfer: Option<CommittedTransfer>,
    /// Transfers switched to a new device so far.
    pub handoffs: u32,
    /// The branches that answered, oldest first; `to_tag` is the one the
    /// media follows.
    pub branches: Vec<Branch>,
    /// The named interface each party's legs are on (user, remote).
    pub interfaces: [String; 2],
    /// What the proxy blocked or silenced.
    pub controls: super::media_control::Controls,
    /// The source policy it was created with: NAT re-learning, asymmetric
    /// peers.
    pub nat_relearn: bool,
    pub asymmetric: bool,
}

impl Record {
    /// Whether `tag` is the dialog's to-tag or another answered branch's.
    pub fn has_to_tag(&self, tag: &str) -> bool {
        self.to_tag == tag || self.branches.iter().any(|b| b.to_tag == tag)
    }
}

/// The sessions and their indexes.
#[derive(Default)]
pub(crate) struct Registry {
    pub by_id: HashMap<SessionId, Record>,
    by_call_id: HashMap<String, Vec<SessionId>>,
    /// Workers that failed and could not be restarted: no new sessions.
    pub down: Vec<bool>,
}

impl Registry {
    /// An empty registry for `workers` media workers.
    pub fn new(workers: usize) -> Self {
        Self {
            down: vec![false; workers],
            ..Self::default()
        }
    }

    pub fn insert(&mut self, record: Record) {
        self.by_call_id
            .entry(record.call_id.clone())
            .or_default()
            .push(record.id);
        self.by_id.insert(record.id, record);
    }

    pub fn remove(&mut self, id: SessionId) -> Option<Record> {
        let record = self.by_id.remove(&id)?;
        if let Some(ids) = self.by_call_id.get_mut(&record.call_id) {
            ids.retain(|other| *other != id);
            if ids.is_empty() {
                self.by_call_id.remove(&record.call_id);
            }
        }
        Some(record)
    }

    /// Sessions of `worker`, counted from the records themselves (so the
    /// load can never drift from what the registry holds).
    #[cfg(test)]
    pub fn load(&self, worker: WorkerId) -> usize {
        self.by_id.values().filter(|r| r.worker == worker).count()
    }

    /// The least loaded worker that is up.
    pub fn least_loaded(&self) -> Option<WorkerId> {
        let mut load = vec![0usize; self.down.len()];
        for record in self.by_id.values() {
            if let Some(n) = load.get_mut(record.worker.0) {
                *n += 1;
            }
        }
        (0..load.len())
            .filter(|&w| !self.down[w])
            .min_by_key(|&w| load[w])
            .map(WorkerId)
    }

    /// Takes out every session pinned to `worker` (which failed).
    pub fn remove_worker(&mut self, worker: WorkerId) -> Vec<Record> {
        let ids: Vec<SessionId> = self
            .by_id
            .values()
            .filter(|r| r.worker == worker)
            .map(|r| r.id)
            .collect();
        ids.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    /// Whether a session of this exact dialog exists (being created or live).
    pub fn has_dialog(&self, call_id: &str, from_tag: &str, to_tag: &str) -> bool {
        self.by_call_id.get(call_id).is_some_and(|ids| {
            ids.iter().any(|id| {
                let r = &self.by_id[id];
                r.from_tag == from_tag && r.to_tag == to_tag
            })
        })
    }

    /// Finds a session by id, or by dialog in either direction (requests
    /// from the callee carry the tags swapped).
    pub fn find(&self, reference: Option<&v1::SessionRef>) -> Result<SessionId, Status> {
        match reference.and_then(|r| r.by.as_ref()) {
            None => Err(Status::invalid_argument(
                "name the session by id or by dialog",
            )),
            Some(By::Id(text)) => {
                let id: SessionId = text.parse().map_err(|_| {
                    Status::invalid_argument(format!("{} is not a session id", excerpt(text)))
                })?;
                if self.by_id.contains_key(&id) {
                    Ok(id)
                } else {
                    Err(Status::not_found(format!("no session {id}")))
                }
            }
            Some(By::Dialog(dialog)) => {
                let candidates: Vec<SessionId> = self
                    .by_call_id
                    .get(&dialog.call_id)
                    .into_iter()
                    .flatten()
                    .copied()
                    .filter(|id| {
                        let r = &self.by_id[id];
                        let forward = r.from_tag == dialog.from_tag
                            && (dialog.to_tag.is_empty() || r.has_to_tag(&dialog.to_tag));
                        let backward = !dialog.to_tag.is_empty()
                            && r.from_tag == dialog.to_tag
                            && r.has_to_tag(&dialog.from_tag);
                        forward || backward
                    })
                    .collect();
                match candidates.as_slice() {
                    [] => Err(Status::not_found(format!(
                        "no session for call-id {} from-tag {} to-tag {}",
                        excerpt(&dialog.call_id),
                        excerpt(&dialog.from_tag),
                        excerpt(&dialog.to_tag)
                    ))),
                    [id] => Ok(*id),
                    _ => Err(Status::failed_precondition(format!(
                        "{} sessions match call-id {} from-tag {}: give the to-tag",
                        candidates.len(),
                        excerpt(&dialog.call_id),
                        excerpt(&dialog.from_tag)
                    ))),
                }
            }
        }
    }

    /// The sessions of a call, oldest first, optionally only those one of
    /// whose tags is `tag`.
    pub fn of_call(&self, call_id: &str, tag: Option<&str>) -> Vec<SessionId> {
        let mut records: Vec<&Record> = self
            .by_call_id
            .get(call_id)
            .into_iter()
            .flatten()
            .map(|id| &self.by_id[id])
            .filter(|r| tag.is_none_or(|t| r.from_tag == t || r.to_tag == t))
            .collect();
        records.sort_by_key(|r| r.created_unix_ms);
        records.into_iter().map(|r| r.id).collect()
    }

    /// The session with an open transfer whose new device's own dialog is
    /// this one (ng `new-call-id` / `new-from-tag`).
    pub fn by_transfer_dialog(&self, call_id: &str, from_tag: Option<&str>) -> Option<SessionId> {
        self.by_id.values().find_map(|r| {
            let (c, f) = r.open_transfer.as_ref()?.ng_dialog.as_ref()?;
            (c == call_id && from_tag.is_none_or(|t| t == f)).then_some(r.id)
        })
    }

    /// Call-IDs with live sessions, oldest first, at most `limit`.
    pub fn call_ids(&self, limit: usize) -> Vec<String> {
        let mut calls: Vec<(u64, &String)> = self
            .by_call_id
            .iter()
            .filter_map(|(call_id, ids)| {
                let oldest = ids
                    .iter()
                    .map(|id| &self.by_id[id])
                    .filter(|r| r.state == RecordState::Live)
                    .map(|r| r.created_unix_ms)
                    .min()?;
                Some((oldest, call_id))
            })
            .collect();
        calls.sort();
        calls
            .into_iter()
            .take(limit)
            .map(|(_, call_id)| call_id.clone())
            .collect()
    }

    /// Transfers open now.
    pub fn open_transfers(&self) -> usize {
        self.by_id
            .values()
            .filter(|r| r.open_transfer.is_some())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, call_id: &str, from: &str, to: &str, worker: usize) -> Record {
        Record {
            id: SessionId(id),
            call_id: call_id.into(),
            from_tag: from.into(),
            to_tag: to.into(),
            aor: String::new(),
            gruu: String::new(),
            worker: WorkerId(worker),
            created_unix_ms: id,
            state: RecordState::Live,
            lock: Arc::default(),
            streams: Vec::new(),
            sdp: None,
            offerer: Party::User,
            open_transfer: None,
            committed_transfer: None,
            handoffs: 0,
            branches: Vec::new(),
            interfaces: Default::default(),
            controls: Default::default(),
            nat_relearn: false,
            asymmetric: false,
        }
    }

    fn dialog(call_id: &str, from: &str, to: &str) -> v1::SessionRef {
        v1::SessionRef {
            by: Some(By::Dialog(v1::Dialog {
                call_id: call_id.into(),
                from_tag: from.into(),
                to_tag: to.into(),
            })),
        }
    }

    #[test]
    fn dialogs_are_found_in_either_direction_and_forks_need_the_to_tag() {
        let mut registry = Registry::new(2);
        registry.insert(record(1, "c", "a", "b1", 0));
        registry.insert(record(2, "c", "a", "b2", 1));
        assert_eq!(
            registry.find(Some(&dialog("c", "b1", "a"))),
            Ok(SessionId(1))
        );
        assert_eq!(
            registry.find(Some(&dialog("c", "a", "b2"))),
            Ok(SessionId(2))
        );
        let forked = registry.find(Some(&dialog("c", "a", ""))).expect_err("two");
        assert_eq!(forked.code, v1::Code::FailedPrecondition);
        assert_eq!(registry.of_call("c", Some("b2")), vec![SessionId(2)]);
        assert_eq!(registry.least_loaded(), Some(WorkerId(0)));
        registry.remove(SessionId(1));
        assert_eq!(registry.load(WorkerId(0)), 0);
        assert_eq!(registry.least_loaded(), Some(WorkerId(0)));
        assert!(registry.has_dialog("c", "a", "b2"));
        assert!(!registry.has_dialog("c", "a", "b1"));
    }

    #[test]
    fn sessions_being_created_are_not_listed() {
        let mut registry = Registry::new(1);
        let mut creating = record(1, "c", "a", "", 0);
        creating.state = RecordState::Creating;
        registry.insert(creating);
        assert!(registry.call_ids(10).is_empty());
        assert!(registry.find(Some(&dialog("c", "a", ""))).is_ok());
    }
}
