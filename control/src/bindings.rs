//! The binding table: which device GRUUs belong to which AOR, as the
//! registrar pushes them. Transfers are verified against it, never against
//! anything the remote party says.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::sip::uri::{Gruu, SipUri, classify, parse_name_addr};
use crate::status::Status;

/// Longest binding accepted (registrars rarely exceed a day).
pub const MAX_EXPIRES: Duration = Duration::from_secs(7 * 24 * 3600);

/// Most live bindings the table holds: a registrar's devices for a large
/// platform, far below what would strain the relay's memory (each is a few
/// hundred bytes).
pub const MAX_BINDINGS: usize = 500_000;

/// Most live bindings of one AOR: more devices than any user has, so that
/// one user (or a registrar fed with junk for one AOR) cannot fill the table.
pub const MAX_BINDINGS_PER_AOR: usize = 64;

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

/// What equivalent GRUUs share ([`SipUri::equivalence_key`]).
type GruuKey = (bool, Option<String>, String, Option<u16>);

/// Every binding, by its GRUU's equivalence key: a registration or a
/// transfer looks at one bucket (a registrar refreshing its devices sends
/// bindings all the time), then §19.1.4 equivalence decides within it.
/// Expired bindings go when their bucket is touched, and all at once when
/// the table is full.
#[derive(Debug, Default)]
pub struct Bindings {
    buckets: HashMap<GruuKey, Vec<Binding>>,
    count: usize,
    /// Live bindings per AOR (by its equivalence key).
    per_aor: HashMap<GruuKey, usize>,
    limit: Option<usize>,
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
    /// A table holding at most `limit` bindings (tests; the relay's is
    /// [`MAX_BINDINGS`]).
    pub fn with_limit(limit: usize) -> Self {
        Self {
            limit: Some(limit),
            ..Self::default()
        }
    }

    fn limit(&self) -> usize {
        self.limit.unwrap_or(MAX_BINDINGS)
    }

    /// Drops every expired binding (a full table's last resort).
    fn purge(&mut self, now: Instant) {
        for bucket in self.buckets.values_mut() {
            bucket.retain(|b| b.expires_at > now);
        }
        self.buckets.retain(|_, bucket| !bucket.is_empty());
        self.count = self.buckets.values().map(Vec::len).sum();
        self.per_aor.clear();
        for binding in self.buckets.values().flatten() {
            *self
                .per_aor
                .entry(binding.aor.equivalence_key())
                .or_default() += 1;
        }
    }

    /// One binding of `aor` fewer.
    fn release(per_aor: &mut HashMap<GruuKey, usize>, aor: &SipUri) {
        let key = aor.equivalence_key();
        if let Some(n) = per_aor.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_aor.remove(&key);
            }
        }
    }

    /// The live bindings equivalent to `gruu`'s bucket, expired ones
    /// dropped first.
    fn bucket(&mut self, now: Instant, gruu: &SipUri) -> Option<&mut Vec<Binding>> {
        let bucket = self.buckets.get_mut(&gruu.equivalence_key())?;
        let per_aor = &mut self.per_aor;
        let before = bucket.len();
        bucket.retain(|b| {
            let live = b.expires_at > now;
            if !live {
                Self::release(per_aor, &b.aor);
            }
            live
        });
        self.count -= before - bucket.len();
        Some(bucket)
    }

    fn find(&self, gruu: &SipUri) -> Option<&Binding> {
        self.buckets
            .get(&gruu.equivalence_key())?
            .iter()
            .find(|b| b.gruu.equivalent(gruu))
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
        let existing = self.bucket(now, &gruu).and_then(|bucket| {
            let index = bucket.iter().position(|b| b.gruu.equivalent(&gruu))?;
            Some((
                bucket[index].aor.equivalent(&aor),
                bucket[index].aor_text.clone(),
                index,
            ))
        });
        if let Some((false, bound_to, _)) = &existing {
            return Err(Status::already_exists(format!(
                "{gruu} is bound to {bound_to}"
            )));
        }
        let key = gruu.equivalence_key();
        if expires.is_zero() {
            let Some((_, _, index)) = existing else {
                // Nothing live to remove; a bucket its expired ones left
                // empty goes too.
                if self.buckets.get(&key).is_some_and(Vec::is_empty) {
                    self.buckets.remove(&key);
                }
                return Ok(false);
            };
            if let Some(bucket) = self.buckets.get_mut(&key) {
                let gone = bucket.remove(index);
                Self::release(&mut self.per_aor, &gone.aor);
                self.count -= 1;
                if bucket.is_empty() {
                    self.buckets.remove(&key);
                }
            }
            return Ok(true);
        }
        let aor_full = |table: &Self| {
            table
                .per_aor
                .get(&aor.equivalence_key())
                .is_some_and(|n| *n >= MAX_BINDINGS_PER_AOR)
        };
        if existing.is_none() && aor_full(self) {
            // Counted bindings of this AOR may have expired elsewhere.
            self.purge(now);
            if aor_full(self) {
                return Err(Status::resource_exhausted(format!(
                    "{aor_text} holds {MAX_BINDINGS_PER_AOR} device bindings already"
                )));
            }
        }
        if existing.is_none() && self.count >= self.limit() {
            self.purge(now);
            if self.count >= self.limit() {
                return Err(Status::resource_exhausted(format!(
                    "the relay holds {} device bindings already",
                    self.limit()
                )));
            }
        }
        let binding = Binding {
            aor_text: aor_text.to_owned(),
            gruu_text: gruu.to_string(),
            aor,
            gruu,
            expires_at: now + expires,
        };
        let bucket = self.buckets.entry(key).or_default();
        match existing {
            Some((_, _, index)) => bucket[index] = binding,
            None => {
                *self
                    .per_aor
                    .entry(binding.aor.equivalence_key())
                    .or_default() += 1;
                bucket.push(binding);
                self.count += 1;
            }
        }
        Ok(true)
    }

    /// Removes the binding of a GRUU; false if there was none.
    pub fn unregister(&mut self, now: Instant, gruu: &SipUri) -> bool {
        let key = gruu.equivalence_key();
        // Expired ones first (counted), then the bucket again, beside the
        // per-AOR counts.
        if self.bucket(now, gruu).is_none() {
            return false;
        }
        let (Some(bucket), per_aor) = (self.buckets.get_mut(&key), &mut self.per_aor) else {
            return false;
        };
        let before = bucket.len();
        bucket.retain(|b| {
            let keep = !b.gruu.equivalent(gruu);
            if !keep {
                Self::release(per_aor, &b.aor);
            }
            keep
        });
        let removed = before - bucket.len();
        let empty = bucket.is_empty();
        self.count -= removed;
        if empty {
            self.buckets.remove(&key);
        }
        removed > 0
    }

    /// Live bindings, optionally only those of one AOR (a scan: an
    /// operator's listing, not a call's path).
    pub fn list(&mut self, now: Instant, aor: Option<&SipUri>) -> Vec<Binding> {
        self.purge(now);
        self.buckets
            .values()
            .flatten()
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
                .find(gruu)
                .filter(|b| b.expires_at > now)
                .map(|b| b.aor.clone())
                .ok_or_else(|| format!("temporary GRUU {gruu} is not bound to any AOR")),
            Gruu::NotAGruu => Err(format!("{gruu} is not a GRUU (no gr parameter)")),
        }
    }

    /// Whether the device `gruu` belongs to `aor`, from this table and the
    /// GRUU's own structure alone. The error says why not.
    pub fn verify(&self, now: Instant, aor: &SipUri, gruu: &SipUri) -> Result<(), String> {
        let bound = self.find(gruu);
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

    /// The table is bounded: past its limit a new binding is refused,
    /// while a refresh of a known one, and a new one once another has
    /// expired, still go in.
    #[test]
    fn the_table_is_bounded_and_expired_bindings_make_room() {
        let now = Instant::now();
        let mut table = Bindings::with_limit(2);
        let temp = |n: u32| uri(&format!("sip:tgruu.{n}@example.com;gr"));
        let minute = Duration::from_secs(60);
        table
            .register(now, ALICE, temp(1), Duration::from_secs(1))
            .expect("1");
        table.register(now, ALICE, temp(2), minute).expect("2");
        let full = table.register(now, ALICE, temp(3), minute);
        assert!(
            full.as_ref()
                .is_err_and(|s| s.code == baton_proto::v1::Code::ResourceExhausted),
            "{full:?}"
        );
        table
            .register(now, ALICE, temp(2), minute)
            .expect("a refresh");
        let later = now + Duration::from_secs(2);
        table
            .register(later, ALICE, temp(3), minute)
            .expect("room after 1 expired");
        assert_eq!(table.list(later, None).len(), 2);
        assert!(table.aor_of(later, &temp(1)).is_err(), "expired");
        assert!(table.aor_of(later, &temp(3)).is_ok());
        assert!(table.unregister(later, &temp(3)));
        assert!(!table.unregister(later, &temp(3)));
        assert_eq!(table.list(later, None).len(), 1);
    }

    /// One AOR cannot take the whole table: past its own bound a new
    /// binding of it is refused, other users' still go in, and a binding
    /// it gives up makes room again.
    #[test]
    fn one_aor_holds_a_bounded_number_of_bindings() {
        let now = Instant::now();
        let mut table = Bindings::default();
        let temp = |n: usize| uri(&format!("sip:tgruu.{n}@example.com;gr"));
        let minute = Duration::from_secs(60);
        for n in 0..MAX_BINDINGS_PER_AOR {
            table
                .register(now, ALICE, temp(n), minute)
                .expect("within the bound");
        }
        let over = table.register(now, ALICE, temp(1000), minute);
        assert!(
            over.as_ref()
                .is_err_and(|s| s.code == baton_proto::v1::Code::ResourceExhausted),
            "{over:?}"
        );
        table
            .register(now, "sip:bob@example.com", temp(2000), minute)
            .expect("another user");
        table
            .register(now, ALICE, temp(3), minute)
            .expect("a refresh");
        assert!(table.unregister(now, &temp(3)));
        table
            .register(now, ALICE, temp(1000), minute)
            .expect("room again");
        // Expiry makes room too.
        let later = now + Duration::from_secs(61);
        table
            .register(later, ALICE, temp(5000), minute)
            .expect("after expiry");
        assert_eq!(table.list(later, Some(&uri(ALICE))).len(), 1);
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
