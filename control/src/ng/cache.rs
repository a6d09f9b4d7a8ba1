//! Replies by cookie, so a retransmitted request is answered, not executed
//! twice. Proxies retransmit over UDP when a reply is slow or lost; an
//! `offer` run twice would allocate a second set of ports.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a reply is kept for retransmissions (a proxy gives up long
/// before: Kamailio's rtpengine module retries within seconds).
pub const REPLY_TTL: Duration = Duration::from_secs(30);
/// Most replies kept; the oldest go first.
pub const MAX_ENTRIES: usize = 65_536;

/// The state of a cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// New: run the request.
    New,
    /// Still running: drop the retransmission, the reply will follow.
    InProgress,
    /// Done: send this reply again.
    Done(Vec<u8>),
}

#[derive(Debug)]
struct Entry {
    at: Instant,
    reply: Option<Vec<u8>>,
}

/// Replies by (client, cookie).
#[derive(Debug, Default)]
pub struct CookieCache {
    entries: HashMap<(SocketAddr, String), Entry>,
    order: VecDeque<(Instant, (SocketAddr, String))>,
}

impl CookieCache {
    /// Looks a request up; a new one is marked in progress.
    pub fn begin(&mut self, now: Instant, from: SocketAddr, cookie: &str) -> Seen {
        self.expire(now);
        let key = (from, cookie.to_owned());
        if let Some(entry) = self.entries.get(&key) {
            return match &entry.reply {
                Some(reply) => Seen::Done(reply.clone()),
                None => Seen::InProgress,
            };
        }
        while self.entries.len() >= MAX_ENTRIES {
            let Some((_, oldest)) = self.order.pop_front() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        self.entries.insert(
            key.clone(),
            Entry {
                at: now,
                reply: None,
            },
        );
        self.order.push_back((now, key));
        Seen::New
    }

    /// Records the reply to a request begun earlier.
    pub fn finish(&mut self, from: SocketAddr, cookie: &str, reply: &[u8]) {
        if let Some(entry) = self.entries.get_mut(&(from, cookie.to_owned())) {
            entry.reply = Some(reply.to_vec());
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < REPLY_TTL {
                break;
            }
            if let Some((at, key)) = self.order.pop_front()
                && self.entries.get(&key).is_some_and(|e| e.at == at)
            {
                self.entries.remove(&key);
            }
        }
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retransmission_gets_the_cached_reply_and_runs_nothing() {
        let mut cache = CookieCache::default();
        let now = Instant::now();
        let proxy: SocketAddr = "127.0.0.1:5060".parse().expect("addr");
        let other: SocketAddr = "127.0.0.1:5061".parse().expect("addr");
        assert_eq!(cache.begin(now, proxy, "c1"), Seen::New);
        assert_eq!(cache.begin(now, proxy, "c1"), Seen::InProgress);
        cache.finish(proxy, "c1", b"c1 d6:result2:oke");
        assert_eq!(
            cache.begin(now, proxy, "c1"),
            Seen::Done(b"c1 d6:result2:oke".to_vec())
        );
        // Another client's identical cookie is its own request.
        assert_eq!(cache.begin(now, other, "c1"), Seen::New);
        // After the TTL the cookie is new again.
        let later = now + REPLY_TTL + Duration::from_secs(1);
        assert_eq!(cache.begin(later, proxy, "c1"), Seen::New);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut cache = CookieCache::default();
        let now = Instant::now();
        let proxy: SocketAddr = "127.0.0.1:5060".parse().expect("addr");
        for i in 0..MAX_ENTRIES + 10 {
            cache.begin(now, proxy, &i.to_string());
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        assert_eq!(
            cache.begin(now, proxy, "0"),
            Seen::New,
            "the oldest went first"
        );
    }
}
