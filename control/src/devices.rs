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
    /// With high availability: where bindings are written, and the keys'
    /// prefix.
    store: std::sync::OnceLock<(crate::ha::store::StoreHandle, String)>,
}

/// A binding as stored for high availability (`PREFIX:binding:GRUU`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StoredBinding {
    /// The AOR as registered.
    pub aor: String,
    /// The GRUU (the URI, resolved from a Contact already).
    pub gruu: String,
    /// When it expires.
    pub expires_unix_ms: u64,
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
        let registered = bindings
            .list(now, None)
            .into_iter()
            .find(|b| b.gruu_text == gruu.to_string());
        drop(bindings);
        match &registered {
            Some(b) => self.persist(b, now),
            None => self.forget(&gruu.to_string()),
        }
        let binding = registered.map(|b| binding_message(&b, now));
        Ok(v1::RegisterDeviceResponse { binding })
    }

    /// Writes bindings to `store` from now on (high availability; once).
    pub fn persist_to(&self, store: crate::ha::store::StoreHandle, prefix: String) {
        let _ = self.store.set((store, prefix));
    }

    fn persist(&self, binding: &Binding, now: Instant) {
        if let (Some((store, _)), Some(write)) = (self.store.get(), self.stored(binding, now)) {
            store.queue(write);
        }
    }

    /// The write that stores `binding`.
    fn stored(&self, binding: &Binding, now: Instant) -> Option<crate::ha::store::Write> {
        let (_, prefix) = self.store.get()?;
        let left = binding.expires_at.saturating_duration_since(now);
        let stored = StoredBinding {
            aor: binding.aor_text.clone(),
            gruu: binding.gruu_text.clone(),
            expires_unix_ms: crate::events::unix_time_ms()
                .saturating_add(u64::try_from(left.as_millis()).unwrap_or(0)),
        };
        Some(crate::ha::store::Write::Set {
            key: format!("{prefix}:binding:{}", binding.gruu_text),
            value: serde_json::to_string(&stored).ok()?,
            ttl: left,
        })
    }

    fn forget(&self, gruu: &str) {
        if let Some((store, prefix)) = self.store.get() {
            store.queue(crate::ha::store::Write::Del {
                key: format!("{prefix}:binding:{gruu}"),
            });
        }
    }

    /// The writes that store every live binding again (after writes were
    /// lost).
    pub fn stored_all(&self) -> Vec<crate::ha::store::Write> {
        let now = Instant::now();
        let live = self.table().list(now, None);
        live.iter().filter_map(|b| self.stored(b, now)).collect()
    }

    /// Registers a stored binding again (a takeover); an expired one is
    /// left out.
    pub fn restore(&self, stored: &StoredBinding) -> Result<(), Status> {
        let left_ms = stored
            .expires_unix_ms
            .saturating_sub(crate::events::unix_time_ms());
        let expires = u32::try_from(left_ms / 1000).unwrap_or(u32::MAX);
        if expires == 0 {
            return Ok(());
        }
        self.register_device(&v1::RegisterDeviceRequest {
            aor: stored.aor.clone(),
            gruu: stored.gruu.clone(),
            expires,
            temporary: false,
        })
        .map(|_| ())
    }

    /// `unregister_device`.
    pub fn unregister_device(
        &self,
        request: &v1::UnregisterDeviceRequest,
    ) -> Result<v1::UnregisterDeviceResponse, Status> {
        let gruu = parse_gruu(&request.gruu, false)?;
        let removed = self.table().unregister(Instant::now(), &gruu);
        if removed {
            self.forget(&gruu.to_string());
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
