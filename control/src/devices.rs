//! The device table as the control commands see it: `register_device`,
//! `unregister_device`, `list_bindings`, and the checks a transfer makes.
//! The table itself ([`Bindings`]) is in [`bindings`](crate::bindings).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use baton_proto::v1;

use crate::bindings::{Binding, Bindings, parse_aor, parse_gruu};
use crate::sip::uri::{Gruu, SipUri, classify};
use crate::status::Status;

/// The relay's device bindings (AOR ↔ GRUU, with expiry).
#[derive(Debug, Default)]
pub struct Devices {
    table: Mutex<Bindings>,
}

impl Devices {
    fn table(&self) -> std::sync::MutexGuard<'_, Bindings> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The AOR a GRUU belongs to (a public GRUU by its structure, a
    /// temporary one by its binding).
    pub fn aor_of(&self, now: Instant, gruu: &SipUri) -> Result<SipUri, String> {
        self.table().aor_of(now, gruu)
    }

    /// Whether `gruu` is a device of `aor`.
    pub fn verify(&self, now: Instant, aor: &SipUri, gruu: &SipUri) -> Result<(), String> {
        self.table().verify(now, aor, gruu)
    }

    /// `register_device`.
    pub fn register_device(
        &self,
        request: &v1::RegisterDeviceRequest,
    ) -> Result<v1::RegisterDeviceResponse, Status> {
        let gruu = parse_gruu(&request.gruu, request.temporary)?;
        let now = Instant::now();
        let expires = Duration::from_secs(request.expires.into());
        let mut bindings = self.table();
        bindings.register(now, &request.aor, gruu.clone(), expires)?;
        let binding = bindings
            .list(now, None)
            .into_iter()
            .find(|b| b.gruu_text == gruu.to_string())
            .map(|b| binding_message(&b, now));
        Ok(v1::RegisterDeviceResponse { binding })
    }

    /// `unregister_device`.
    pub fn unregister_device(
        &self,
        request: &v1::UnregisterDeviceRequest,
    ) -> Result<v1::UnregisterDeviceResponse, Status> {
        let gruu = parse_gruu(&request.gruu, false)?;
        if self.table().unregister(Instant::now(), &gruu) {
            Ok(v1::UnregisterDeviceResponse {})
        } else {
            Err(Status::not_found(format!("no binding for {gruu}")))
        }
    }

    /// `list_bindings`.
    pub fn list_bindings(
        &self,
        request: &v1::ListBindingsRequest,
    ) -> Result<v1::ListBindingsResponse, Status> {
        let aor = if request.aor.is_empty() {
            None
        } else {
            Some(parse_aor(&request.aor)?)
        };
        let now = Instant::now();
        let bindings = self
            .table()
            .list(now, aor.as_ref())
            .iter()
            .map(|b| binding_message(b, now))
            .collect();
        Ok(v1::ListBindingsResponse { bindings })
    }
}

fn binding_message(binding: &Binding, now: Instant) -> v1::Binding {
    let kind = match binding.gruu_text.parse().map(|uri| classify(&uri)) {
        Ok(Gruu::Temporary) => "temporary",
        Ok(Gruu::Public { .. } | Gruu::NotAGruu) | Err(_) => "public",
    };
    v1::Binding {
        aor: binding.aor_text.clone(),
        gruu: binding.gruu_text.clone(),
        kind: kind.to_owned(),
        expires_in: u32::try_from(binding.expires_at.saturating_duration_since(now).as_secs())
            .unwrap_or(u32::MAX),
    }
}
