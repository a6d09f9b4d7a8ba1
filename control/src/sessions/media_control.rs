//! What the proxy blocks or silences on a call (rtpengine's `block media`,
//! `silence media`, `block DTMF` and their opposites): kept on the session
//! (for the call, and per participant), and sent to its worker as the
//! union of the two for each sending party. A participant is the party,
//! not a device: a handoff keeps what was blocked.

use baton_relay::Party;
use baton_relay::SessionId;
use baton_relay::core::session::SessionUpdate;
use baton_relay::core::stream::MediaControl;

use super::Sessions;
use crate::status::Status;

/// Whom a control command is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlTarget {
    /// The whole call (every participant), kept apart from what was set
    /// for one participant.
    Call,
    /// One participant.
    Party(Party),
    /// The whole call and every participant's own setting (rtpengine's
    /// `all` on an unblock).
    Everything,
}

/// Which control a command changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// `block media` / `unblock media`.
    BlockMedia,
    /// `silence media` / `unsilence media`.
    SilenceMedia,
    /// `block DTMF` / `unblock DTMF`.
    BlockDtmf,
}

impl Control {
    fn set(self, control: &mut MediaControl, on: bool) {
        match self {
            Self::BlockMedia => control.block_media = on,
            Self::SilenceMedia => control.silence_media = on,
            Self::BlockDtmf => control.block_dtmf = on,
        }
    }
}

/// A session's controls: set for the call, and per party (user, remote).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Controls {
    /// Set for the whole call.
    pub call: MediaControl,
    /// Set for one participant, by party.
    pub parties: [MediaControl; 2],
}

impl Controls {
    /// What applies to each sending party.
    pub fn effective(&self) -> [MediaControl; 2] {
        [
            self.call.union(self.parties[0]),
            self.call.union(self.parties[1]),
        ]
    }

    fn change(&mut self, target: ControlTarget, control: Control, on: bool) {
        match target {
            ControlTarget::Call => control.set(&mut self.call, on),
            ControlTarget::Party(party) => control.set(&mut self.parties[party.index()], on),
            ControlTarget::Everything => {
                control.set(&mut self.call, on);
                for party in &mut self.parties {
                    control.set(party, on);
                }
            }
        }
    }
}

impl Sessions {
    /// Turns `control` on or off for `target` on session `id`, at once on
    /// its worker.
    pub async fn control_media(
        &self,
        id: SessionId,
        target: ControlTarget,
        control: Control,
        on: bool,
    ) -> Result<(), Status> {
        let (_guard, record) = self.lock_id(id).await?;
        let mut controls = record.controls;
        controls.change(target, control, on);
        if controls.effective() != record.controls.effective() {
            let update = SessionUpdate {
                controls: Some(controls.effective()),
                ..SessionUpdate::default()
            };
            self.dataplane
                .update_session(record.worker, id, update)
                .await?;
        }
        if let Some(current) = self.registry().by_id.get_mut(&id) {
            current.controls = controls;
        }
        Ok(())
    }
}

/// What `record` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordAction {
    /// Start, or resume after a pause.
    Start,
    /// Stop copying; a start appends to the same file.
    Pause,
    /// Stop and write the call's metadata.
    Stop,
}

impl Sessions {
    /// Starts, pauses or stops recording session `id`. Starting needs a
    /// recording directory; its pcap file is created at once, so a
    /// directory that cannot be written is an error here, not later.
    /// Returns the pcap file (start) or the metadata file (stop).
    pub async fn record(
        &self,
        id: SessionId,
        action: RecordAction,
    ) -> Result<Option<std::path::PathBuf>, Status> {
        let Some(recordings) = self.recordings() else {
            return Err(Status::failed_precondition(
                "call recording is off: set recording-dir to record calls",
            ));
        };
        let (_guard, record) = self.lock_id(id).await?;
        let names = call_names(&record);
        match action {
            RecordAction::Start if recordings.is_recording(id) => Ok(None),
            RecordAction::Start => {
                let (tap, pcap) = recordings.begin(id, &names).map_err(|e| {
                    Status::failed_precondition(format!(
                        "cannot record session {id}: cannot write its pcap file: {e}"
                    ))
                })?;
                let update = SessionUpdate {
                    record: Some(Some(tap)),
                    ..SessionUpdate::default()
                };
                if let Err(e) = self
                    .dataplane
                    .update_session(record.worker, id, update)
                    .await
                {
                    recordings.finish(id, &names);
                    return Err(e.into());
                }
                Ok(Some(pcap))
            }
            RecordAction::Pause | RecordAction::Stop => {
                let update = SessionUpdate {
                    record: Some(None),
                    ..SessionUpdate::default()
                };
                self.dataplane
                    .update_session(record.worker, id, update)
                    .await?;
                Ok(if action == RecordAction::Pause {
                    recordings.pause(id);
                    None
                } else {
                    recordings.finish(id, &names)
                })
            }
        }
    }
}

/// What names a recorded call in its metadata.
pub(crate) fn call_names(record: &super::registry::Record) -> crate::recording::CallNames {
    crate::recording::CallNames {
        call_id: record.call_id.clone(),
        from_tag: record.from_tag.clone(),
        to_tag: record.to_tag.clone(),
        aor: record.aor.clone(),
        gruu: record.gruu.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_wide_unblock_leaves_a_participants_own_block_unless_all() {
        let mut controls = Controls::default();
        controls.change(ControlTarget::Party(Party::User), Control::BlockMedia, true);
        controls.change(ControlTarget::Call, Control::BlockMedia, true);
        assert!(controls.effective()[1].block_media);
        controls.change(ControlTarget::Call, Control::BlockMedia, false);
        let [user, remote] = controls.effective();
        assert!(user.block_media && !remote.block_media);
        controls.change(ControlTarget::Everything, Control::BlockMedia, false);
        assert_eq!(controls.effective(), [MediaControl::default(); 2]);
        controls.change(ControlTarget::Call, Control::BlockDtmf, true);
        let [user, remote] = controls.effective();
        assert!(user.block_dtmf && remote.block_dtmf && !user.block_media);
    }
}
