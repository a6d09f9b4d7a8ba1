//! Replies by cookie, so a retransmitted request is answered, not executed
//! twice. Proxies retransmit over UDP when a reply is slow or lost; an
//! `offer` run twice would allocate a second set of ports.
//!
//! The cache is bounded twice: by entries and by bytes (replies, cookies and
//! a fixed overhead per entry), oldest out first, so a flood of large
//! requests cannot grow the relay.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a reply is kept for retransmissions (a proxy gives up long
/// before: Kamailio's rtpengine module retries within seconds).
pub const REPLY_TTL: Duration = Duration::from_secs(30);
/// Most replies kept; the oldest go first.
pub const MAX_ENTRIES: usize = 16_384;
/// Most bytes kept (replies, cookies and [`ENTRY_OVERHEAD`] each).
pub const MAX_BYTES: usize = 16 << 20;
/// What one entry costs beyond its reply and cookie: the key, the map slot
/// and the queue slot, rounded up.
const ENTRY_OVERHEAD: usize = 128;

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
    bytes: usize,
    evicted: u64,
}

fn cost(cookie: &str, reply: Option<&Vec<u8>>) -> usize {
    ENTRY_OVERHEAD + cookie.len() + reply.map_or(0, Vec::len)
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
        let needed = cost(cookie, None);
        while self.entries.len() >= MAX_ENTRIES || self.bytes + needed > MAX_BYTES {
            if !self.evict_oldest() {
                break;
            }
        }
        self.bytes += needed;
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

    /// Records the reply to a request begun earlier. A reply larger than the
    /// whole budget is not kept (its retransmission runs again).
    pub fn finish(&mut self, from: SocketAddr, cookie: &str, reply: &[u8]) {
        if cost(cookie, None) + reply.len() > MAX_BYTES {
            self.forget(from, cookie);
            return;
        }
        while self.bytes + reply.len() > MAX_BYTES {
            if !self.evict_oldest() {
                break;
            }
        }
        if let Some(entry) = self.entries.get_mut(&(from, cookie.to_owned())) {
            if let Some(old) = entry.reply.replace(reply.to_vec()) {
                self.bytes -= old.len();
            }
            self.bytes += reply.len();
        }
    }

    fn forget(&mut self, from: SocketAddr, cookie: &str) {
        if let Some(entry) = self.entries.remove(&(from, cookie.to_owned())) {
            self.bytes -= cost(cookie, entry.reply.as_ref());
        }
    }

    /// Drops the oldest entry still held; false when there is none.
    fn evict_oldest(&mut self) -> bool {
        while let Some((at, key)) = self.order.pop_front() {
            if self.entries.get(&key).is_some_and(|e| e.at == at) {
                if let Some(entry) = self.entries.remove(&key) {
                    self.bytes -= cost(&key.1, entry.reply.as_ref());
                }
                self.evicted += 1;
                return true;
            }
        }
        false
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < REPLY_TTL {
                break;
            }
            if let Some((at, key)) = self.order.pop_front()
                && self.entries.get(&key).is_some_and(|e| e.at == at)
                && let Some(entry) = self.entries.remove(&key)
            {
                self.bytes -= cost(&key.1, entry.reply.as_ref());
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

    /// Bytes held now, as the budget counts them.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries pushed out by the limits (not by age) since the last call.
    pub fn take_evicted(&mut self) -> u64 {
        std::mem::take(&mut self.evicted)
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
        assert_eq!(cache.bytes(), ENTRY_OVERHEAD + 2);
    }

    #[test]
    fn the_cache_is_bounded_by_count() {
        let mut cache = CookieCache::default();
        let now = Instant::now();
        let proxy: SocketAddr = "127.0.0.1:5060".parse().expect("addr");
        for i in 0..MAX_ENTRIES + 10 {
            cache.begin(now, proxy, &i.to_string());
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        assert_eq!(cache.take_evicted(), 10);
        assert_eq!(
            cache.begin(now, proxy, "0"),
            Seen::New,
            "the oldest went first"
        );
    }

    /// Issue 14: 3 000 replies of 60 KB used to be kept for 30 s (about
    /// 170 MiB); the byte budget keeps the newest that fit.
    #[test]
    fn the_cache_is_bounded_by_bytes() {
        let mut cache = CookieCache::default();
        let now = Instant::now();
        let proxy: SocketAddr = "127.0.0.1:5060".parse().expect("addr");
        let reply = vec![b'x'; 60_000];
        for i in 0..3000 {
            let cookie = i.to_string();
            assert_eq!(cache.begin(now, proxy, &cookie), Seen::New);
            cache.finish(proxy, &cookie, &reply);
            assert!(cache.bytes() <= MAX_BYTES);
        }
        let kept = cache.len();
        assert!(kept < 300 && kept > 200, "{kept} replies kept");
        assert_eq!(
            cache.begin(now, proxy, "2999"),
            Seen::Done(reply.clone()),
            "the newest is kept"
        );
        assert_eq!(cache.begin(now, proxy, "0"), Seen::New, "the oldest went");
        // A reply larger than the budget is not kept at all.
        cache.begin(now, proxy, "huge");
        cache.finish(proxy, "huge", &vec![0; MAX_BYTES + 1]);
        assert_eq!(cache.begin(now, proxy, "huge"), Seen::New);
        assert!(cache.bytes() <= MAX_BYTES);
    }
}
