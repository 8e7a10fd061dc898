//! The origin's memory of immutable objects: whole segments, init segments and pictures with
//! their response headers, least recently used first out, within a byte budget. An entry is
//! checked against the store again (one metadata read) once it is `revalidate` old, so an
//! object removed from storage stops being served within that time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use bytes::Bytes;

/// One cached object.
#[derive(Debug)]
pub struct Entry {
    /// The whole object.
    pub bytes: Bytes,
    /// `Content-Type`.
    pub content_type: Option<HeaderValue>,
    /// `Cache-Control`.
    pub cache_control: Option<HeaderValue>,
    /// The strong validator the store gave it.
    pub etag: Option<HeaderValue>,
    /// When the store last vouched for it.
    pub checked: Mutex<Instant>,
}

impl Entry {
    /// Whether it is due a check against the store.
    pub fn stale(&self, revalidate: Duration) -> bool {
        self.checked
            .lock()
            .map(|t| t.elapsed() >= revalidate)
            .unwrap_or(true)
    }

    /// The store vouched for it again.
    pub fn vouched(&self) {
        if let Ok(mut t) = self.checked.lock() {
            *t = Instant::now();
        }
    }
}

struct Slot {
    entry: std::sync::Arc<Entry>,
    tick: u64,
}

#[derive(Default)]
struct Lru {
    map: HashMap<String, Slot>,
    /// tick → key, oldest first.
    order: BTreeMap<u64, String>,
    tick: u64,
    bytes: u64,
}

/// Counters, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Objects held.
    pub entries: usize,
    /// Bytes held.
    pub bytes: u64,
}

/// A byte-bounded LRU of immutable objects.
pub struct Cache {
    budget: u64,
    max_entry: u64,
    /// How long an entry is served before the store is asked again.
    pub revalidate: Duration,
    lru: Mutex<Lru>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("budget", &self.budget)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Cache {
    /// A cache of at most `budget` bytes; objects over an eighth of it (or 32 MiB) are never
    /// held, so one large object cannot flush everything else.
    pub fn new(budget: u64, revalidate: Duration) -> Cache {
        Cache {
            budget,
            max_entry: (budget / 8).min(32 << 20),
            revalidate,
            lru: Mutex::new(Lru::default()),
        }
    }

    /// Whether an object of `size` bytes may be held.
    pub fn fits(&self, size: u64) -> bool {
        size > 0 && size <= self.max_entry
    }

    /// The entry for `key`, marked as just used.
    pub fn get(&self, key: &str) -> Option<std::sync::Arc<Entry>> {
        let mut guard = self.lru.lock().ok()?;
        let lru = &mut *guard;
        lru.tick += 1;
        let tick = lru.tick;
        let slot = lru.map.get_mut(key)?;
        lru.order.remove(&slot.tick);
        slot.tick = tick;
        lru.order.insert(tick, key.to_string());
        Some(slot.entry.clone())
    }

    /// Holds `entry` for `key`, evicting the least recently used until it fits.
    pub fn insert(&self, key: &str, entry: std::sync::Arc<Entry>) {
        let size = entry.bytes.len() as u64;
        if !self.fits(size) {
            return;
        }
        let Ok(mut guard) = self.lru.lock() else {
            return;
        };
        let lru = &mut *guard;
        if let Some(old) = lru.map.remove(key) {
            lru.order.remove(&old.tick);
            lru.bytes -= old.entry.bytes.len() as u64;
        }
        while lru.bytes + size > self.budget {
            let Some((_, victim)) = lru.order.pop_first() else {
                break;
            };
            if let Some(v) = lru.map.remove(&victim) {
                lru.bytes -= v.entry.bytes.len() as u64;
            }
        }
        lru.tick += 1;
        let tick = lru.tick;
        lru.order.insert(tick, key.to_string());
        lru.map.insert(key.to_string(), Slot { entry, tick });
        lru.bytes += size;
    }

    /// Forgets `key` (the store no longer has it, or has other bytes under it).
    pub fn remove(&self, key: &str) {
        if let Ok(mut guard) = self.lru.lock() {
            let lru = &mut *guard;
            if let Some(old) = lru.map.remove(key) {
                lru.order.remove(&old.tick);
                lru.bytes -= old.entry.bytes.len() as u64;
            }
        }
    }

    /// What it holds.
    pub fn stats(&self) -> Stats {
        self.lru
            .lock()
            .map(|l| Stats {
                entries: l.map.len(),
                bytes: l.bytes,
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn entry(n: usize) -> Arc<Entry> {
        Arc::new(Entry {
            bytes: Bytes::from(vec![0u8; n]),
            content_type: None,
            cache_control: None,
            etag: None,
            checked: Mutex::new(Instant::now()),
        })
    }

    #[test]
    fn stays_within_its_budget_and_evicts_the_least_recently_used() {
        let c = Cache::new(8000, Duration::from_secs(60));
        assert!(
            c.fits(1000) && !c.fits(1001) && !c.fits(0),
            "an eighth of the budget at most"
        );
        for k in ["a", "b", "c", "d", "e", "f", "g", "h"] {
            c.insert(k, entry(1000));
        }
        assert_eq!(
            c.stats(),
            Stats {
                entries: 8,
                bytes: 8000
            }
        );
        // touch "a", then add one more: "b" (now the oldest) goes
        assert!(c.get("a").is_some());
        c.insert("i", entry(1000));
        assert!(c.get("b").is_none());
        assert!(c.get("a").is_some() && c.get("i").is_some());
        assert_eq!(c.stats().bytes, 8000);
        // replacing an entry does not count it twice
        c.insert("a", entry(500));
        assert_eq!(c.stats().bytes, 7500);
        c.remove("a");
        assert_eq!(
            c.stats(),
            Stats {
                entries: 7,
                bytes: 7000
            }
        );
        // too large to hold: ignored
        c.insert("big", entry(5000));
        assert!(c.get("big").is_none());
    }

    #[test]
    fn entries_go_stale_after_the_revalidation_time() {
        let e = entry(10);
        assert!(!e.stale(Duration::from_secs(60)));
        assert!(e.stale(Duration::ZERO));
        *e.checked.lock().unwrap() = Instant::now() - Duration::from_secs(61);
        assert!(e.stale(Duration::from_secs(60)));
        e.vouched();
        assert!(!e.stale(Duration::from_secs(60)));
    }
}
