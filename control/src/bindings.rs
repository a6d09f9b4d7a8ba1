//! The binding table: which device GRUUs belong to which AOR, as the
//! registrar pushes them. Transfers are verified against it, never against
//! anything the remote party says.

use std::time::{Duration, Instant};

use crate::sip::uri::{Gruu, SipUri, classify, parse_name_addr};
use crate::status::Status;

/// Longest binding accepted (registrars rarely exceed a day).
pub const MAX_EXPIRES: Duration = Duration::from_secs(7 * 24 * 3600);

/// Most live bindings the table holds: a registrar's devices for a large
/// platform, far below what would strain the relay's memory (each is a few
/// hundred bytes).
pub const MAX_BINDINGS: usize = 500_000;

/// One binding.
#[derive(Debug, Clone)]
pub struct Binding {
    /// The AOR as given.
    pub aor_text: String,
    /// The GRUU as given (the URI part of a Contact value).
    pub gruu_text: String,
    aor: SipUri,
    gruu: SipUri,
    /// When it stops counting.
    pub expires_at: Instant,
}

/// Every live binding. Linear scans: transfers and registrations are control
/// operations, and §19.1.4 equivalence has no cheap canonical key.
#[derive(Debug, Default)]
pub struct Bindings {
    entries: Vec<Binding>,
}

/// Parses an AOR (a URI, or a header value with angle brackets).
pub fn parse_aor(text: &str) -> Result<SipUri, Status> {
    crate::status::check_len("AOR", text, crate::status::MAX_URI_LEN)?;
    parse_name_addr(text)
        .map(|(uri, _)| uri)
        .map_err(|e| Status::invalid_argument(format!("AOR: {e}")))
}

/// Parses a device GRUU from a URI or a Contact header value. A Contact
/// carrying `pub-gruu`/`temp-gruu` header parameters (a registrar's 200 OK)
/// names its GRUU there; `temp` selects the temporary one.
pub fn parse_gruu(text: &str, temp: bool) -> Result<SipUri, Status> {
    crate::status::check_len("GRUU", text, crate::status::MAX_URI_LEN)?;
    let (uri, params) =
        parse_name_addr(text).map_err(|e| Status::invalid_argument(format!("GRUU: {e}")))?;
    let wanted = if temp { "temp-gruu" } else { "pub-gruu" };
    match params.iter().find(|(name, _)| name == wanted) {
        Some((_, Some(value))) => value
            .parse()
            .map_err(|e| Status::invalid_argument(format!("{wanted}: {e}"))),
        Some((_, None)) => Err(Status::invalid_argument(format!("{wanted} has no value"))),
        None => Ok(uri),
    }
}

impl Bindings {
    fn purge(&mut self, now: Instant) {
        self.entries.retain(|b| b.expires_at > now);
    }

    /// Adds or refreshes a binding; `expires` 0 removes it.
    pub fn register(
        &mut self,
        now: Instant,
        aor_text: &str,
        gruu: SipUri,
        expires: Duration,
    ) -> Result<bool, Status> {
        let aor = parse_aor(aor_text)?;
        match classify(&gruu) {
            Gruu::NotAGruu => {
                return Err(Status::invalid_argument(format!(
                    "{gruu} is not a GRUU (it has no gr parameter)"
                )));
            }
            Gruu::Public { aor: own } if !own.equivalent(&aor) => {
                return Err(Status::invalid_argument(format!(
                    "public GRUU {gruu} belongs to {own}, not {aor}"
                )));
            }
            Gruu::Public { .. } | Gruu::Temporary => {}
        }
        if expires > MAX_EXPIRES {
            return Err(Status::invalid_argument(format!(
                "expires {} s is longer than {} s",
                expires.as_secs(),
                MAX_EXPIRES.as_secs()
            )));
        }
        self.purge(now);
        let existing = self.entries.iter().position(|b| b.gruu.equivalent(&gruu));
        if let Some(index) = existing
            && !self.entries[index].aor.equivalent(&aor)
        {
            return Err(Status::already_exists(format!(
                "{gruu} is bound to {}",
                self.entries[index].aor_text
            )));
        }
        if expires.is_zero() {
            return Ok(existing.map(|i| self.entries.remove(i)).is_some());
        }
        let binding = Binding {
            aor_text: aor_text.to_owned(),
            gruu_text: gruu.to_string(),
            aor,
            gruu,
            expires_at: now + expires,
        };
        match existing {
            Some(index) => self.entries[index] = binding,
            None if self.entries.len() >= MAX_BINDINGS => {
                return Err(Status::resource_exhausted(format!(
                    "the relay holds {MAX_BINDINGS} device bindings already"
                )));
            }
            None => self.entries.push(binding),
        }
        Ok(true)
    }

    /// Removes the binding of a GRUU; false if there was none.
    pub fn unregister(&mut self, now: Instant, gruu: &SipUri) -> bool {
        self.purge(now);
        let before = self.entries.len();
        self.entries.retain(|b| !b.gruu.equivalent(gruu));
        self.entries.len() != before
    }

    /// Live bindings, optionally only those of one AOR.
    pub fn list(&mut self, now: Instant, aor: Option<&SipUri>) -> Vec<Binding> {
        self.purge(now);
        self.entries
            .iter()
            .filter(|b| aor.is_none_or(|a| b.aor.equivalent(a)))
            .cloned()
            .collect()
    }

    /// The AOR a GRUU belongs to: a public GRUU's own, a temporary GRUU's
    /// from its live binding.
    pub fn aor_of(&self, now: Instant, gruu: &SipUri) -> Result<SipUri, String> {
        match classify(gruu) {
            Gruu::Public { aor } => Ok(aor),
            Gruu::Temporary => self
                .entries
                .iter()
                .find(|b| b.gruu.equivalent(gruu) && b.expires_at > now)
                .map(|b| b.aor.clone())
                .ok_or_else(|| format!("temporary GRUU {gruu} is not bound to any AOR")),
            Gruu::NotAGruu => Err(format!("{gruu} is not a GRUU (no gr parameter)")),
        }
    }

    /// Whether the device `gruu` belongs to `aor`, from this table and the
    /// GRUU's own structure alone. The error says why not.
    pub fn verify(&self, now: Instant, aor: &SipUri, gruu: &SipUri) -> Result<(), String> {
        let bound = self.entries.iter().find(|b| b.gruu.equivalent(gruu));
        match (classify(gruu), bound) {
            (Gruu::Public { aor: own }, _) if own.equivalent(aor) => Ok(()),
            (Gruu::Public { aor: own }, _) => Err(format!(
                "public GRUU {gruu} belongs to {own}, not to the session's AOR {aor}"
            )),
            (Gruu::Temporary, Some(binding)) if binding.expires_at <= now => {
                Err(format!("the binding of temporary GRUU {gruu} has expired"))
            }
            (Gruu::Temporary, Some(binding)) if binding.aor.equivalent(aor) => Ok(()),
            (Gruu::Temporary, Some(binding)) => Err(format!(
                "temporary GRUU {gruu} is bound to {}, not to the session's AOR {aor}",
                binding.aor_text
            )),
            (Gruu::Temporary, None) => {
                Err(format!("temporary GRUU {gruu} is not bound to any AOR"))
            }
            (Gruu::NotAGruu, _) => Err(format!("{gruu} is not a GRUU (no gr parameter)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "sip:alice@example.com";
    const TEMP: &str = "sip:tgruu.7hs==jd7vnzga5w7fajsc7-ajd6fabz0f8g5@example.com;gr";

    fn uri(text: &str) -> SipUri {
        text.parse().expect("uri")
    }

    #[test]
    fn public_gruus_are_checked_structurally() {
        let table = Bindings::default();
        let now = Instant::now();
        let alice = uri(ALICE);
        assert!(
            table
                .verify(now, &alice, &uri("sip:alice@EXAMPLE.com;gr=urn:uuid:1"))
                .is_ok()
        );
        let error = table
            .verify(now, &alice, &uri("sip:mallory@example.com;gr=urn:uuid:1"))
            .expect_err("other user");
        assert!(
            error.contains("belongs to sip:mallory@example.com"),
            "{error}"
        );
        assert!(
            table
                .verify(now, &alice, &uri("sip:alice@example.com"))
                .is_err()
        );
    }

    #[test]
    fn temporary_gruus_need_a_live_binding() {
        let mut table = Bindings::default();
        let now = Instant::now();
        let alice = uri(ALICE);
        let temp = uri(TEMP);
        assert!(
            table
                .verify(now, &alice, &temp)
                .expect_err("unbound")
                .contains("not bound")
        );
        table
            .register(now, ALICE, temp.clone(), Duration::from_secs(60))
            .expect("register");
        assert!(table.verify(now, &alice, &temp).is_ok());
        assert!(
            table
                .verify(now, &uri("sip:bob@example.com"), &temp)
                .expect_err("other")
                .contains("bound to sip:alice")
        );
        let later = now + Duration::from_secs(61);
        assert!(
            table
                .verify(later, &alice, &temp)
                .expect_err("expired")
                .contains("expired")
        );
        assert!(
            table.list(later, None).is_empty(),
            "expired bindings are not listed"
        );
    }

    #[test]
    fn registration_rules() {
        let mut table = Bindings::default();
        let now = Instant::now();
        let temp = uri(TEMP);
        assert!(
            table
                .register(
                    now,
                    ALICE,
                    uri("sip:alice@example.com"),
                    Duration::from_secs(60)
                )
                .is_err()
        );
        assert!(
            table
                .register(
                    now,
                    ALICE,
                    uri("sip:bob@example.com;gr=urn:uuid:1"),
                    Duration::from_secs(60)
                )
                .is_err()
        );
        table
            .register(now, ALICE, temp.clone(), Duration::from_secs(60))
            .expect("register");
        // Another AOR cannot take over a bound GRUU.
        let taken = table.register(
            now,
            "sip:bob@example.com",
            temp.clone(),
            Duration::from_secs(60),
        );
        assert!(taken.is_err());
        // Expires 0 removes; unregister too.
        assert!(
            table
                .register(now, ALICE, temp.clone(), Duration::ZERO)
                .expect("remove")
        );
        assert!(!table.unregister(now, &temp));
    }

    #[test]
    fn gruu_from_a_registrar_contact() {
        let contact = r#"<sip:alice@192.0.2.5:5060;transport=tcp>;+sip.instance="<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>";pub-gruu="sip:alice@example.com;gr=urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6";temp-gruu="sip:tgruu.7hs==jd7vnzga5w7fajsc7-ajd6fabz0f8g5@example.com;gr";expires=3600"#;
        let public = parse_gruu(contact, false).expect("pub");
        assert!(matches!(classify(&public), Gruu::Public { .. }));
        let temp = parse_gruu(contact, true).expect("temp");
        assert_eq!(classify(&temp), Gruu::Temporary);
        assert!(parse_gruu("<sip:bad uri>", false).is_err());
    }
}
