//! Login throttling: failed logins are counted per email and per client address over a fixed
//! window; past the limit that email or address is refused (429) until its window ends, before
//! any hash is run. Each table holds at most a fixed number of entries.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries a table holds at most: about 100 bytes each.
pub const CAPACITY: usize = 10_000;

/// How many failed logins are allowed within a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Failures per email.
    pub per_email: u32,
    /// Failures per client address (many users may share one).
    pub per_address: u32,
    /// The window a count covers, from its first failure.
    pub window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_email: 10,
            per_address: 50,
            window: Duration::from_secs(300),
        }
    }
}

/// Failures counted per key over a window, in a table of bounded size.
#[derive(Debug)]
pub struct Throttle {
    limit: u32,
    window: Duration,
    capacity: usize,
    table: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    since: Instant,
}

impl Throttle {
    /// `limit` failures per `window`, at most `capacity` keys tracked.
    pub fn new(limit: u32, window: Duration, capacity: usize) -> Self {
        Throttle {
            limit: limit.max(1),
            window,
            capacity: capacity.max(1),
            table: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(how long until it may try again)` when `key` has used up its failures.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        match self.lock().get(key) {
            Some(entry) if entry.failures >= self.limit => {
                let ends = entry.since + self.window;
                if ends > now { Err(ends - now) } else { Ok(()) }
            }
            _ => Ok(()),
        }
    }

    /// Counts a failure of `key`.
    pub fn failed(&self, key: &str, now: Instant) {
        let mut table = self.lock();
        if let Some(entry) = table.get_mut(key) {
            if now.duration_since(entry.since) >= self.window {
                *entry = Entry {
                    failures: 1,
                    since: now,
                };
            } else {
                entry.failures = entry.failures.saturating_add(1);
            }
            return;
        }
        if table.len() >= self.capacity {
            table.retain(|_, e| now.duration_since(e.since) < self.window);
        }
        if table.len() >= self.capacity {
            // Still full of live windows: the oldest goes, which lets its key start afresh;
            // memory stays bounded either way.
            if let Some(oldest) = table
                .iter()
                .min_by_key(|(_, e)| e.since)
                .map(|(k, _)| k.clone())
            {
                table.remove(&oldest);
            }
        }
        table.insert(
            key.to_owned(),
            Entry {
                failures: 1,
                since: now,
            },
        );
    }

    /// Forgets `key`'s failures (after a successful login).
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock leaves whole entries: each change is one insert,
        // removal or field update.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_refused_after_its_failures_until_its_window_ends() {
        let throttle = Throttle::new(3, Duration::from_secs(60), 100);
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(throttle.check("a", start), Ok(()));
            throttle.failed("a", start);
        }
        let later = start + Duration::from_secs(20);
        assert_eq!(throttle.check("a", later), Err(Duration::from_secs(40)));
        assert_eq!(
            throttle.check("b", later),
            Ok(()),
            "other keys are not held"
        );
        let after = start + Duration::from_secs(60);
        assert_eq!(throttle.check("a", after), Ok(()));
        throttle.failed("a", after);
        assert_eq!(throttle.check("a", after), Ok(()), "a new window starts");
        throttle.forget("a");
        assert!(throttle.is_empty());
    }

    #[test]
    fn the_table_never_holds_more_than_its_capacity() {
        let throttle = Throttle::new(3, Duration::from_secs(60), 100);
        let start = Instant::now();
        for i in 0..1_000 {
            throttle.failed(&format!("key{i}"), start + Duration::from_millis(i));
            assert!(throttle.len() <= 100);
        }
        assert_eq!(throttle.len(), 100);
        for _ in 0..3 {
            throttle.failed("key999", start + Duration::from_secs(1));
        }
        assert!(
            throttle
                .check("key999", start + Duration::from_secs(2))
                .is_err(),
            "the newest keys are kept"
        );
    }
}
