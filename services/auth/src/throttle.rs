//! Login and sign-up throttling: attempts counted per key over a fixed window, as they start.
//!
//! Keys are an email and client address, an email, a client address. Counting is atomic with
//! the check; past the limit the key is refused (429) until its window ends, before any hash
//! is run. Each table holds at most a fixed number of entries.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries a table holds at most: about 100 bytes each.
pub const CAPACITY: usize = 10_000;

/// How many failed logins and sign-ups are allowed within a window.
///
/// A guesser at one address is stopped by the count of an email from that address, so it
/// cannot lock the email's owner out elsewhere; the count of an email from every address,
/// higher, stops guessing spread over many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Failures per email from one client address.
    pub per_email_and_address: u32,
    /// Failures per email from every address together.
    pub per_email: u32,
    /// Failures per client address (many users may share one).
    pub per_address: u32,
    /// Sign-ups per client address, whatever their outcome (each costs a hash).
    pub sign_ups_per_address: u32,
    /// The window a count covers, from its first failure.
    pub window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_email_and_address: 10,
            per_email: 100,
            per_address: 50,
            sign_ups_per_address: 100,
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

    /// Counts an attempt of `key` at once, or `Err(how long until it may try again)` when its
    /// window's attempts are used up. Counting as it checks, under one lock, is what makes the
    /// limit hold for concurrent attempts: a check now and a count after the hash would let
    /// every request in flight pass the check before the first one counts. The attempt stays
    /// counted once [`Attempt::failed`]; dropped without (it succeeded, or was given up before
    /// its outcome), it is taken back.
    pub fn reserve(&self, key: &str, now: Instant) -> Result<Attempt<'_>, Duration> {
        let mut table = self.lock();
        if let Some(entry) = table.get_mut(key) {
            if now.duration_since(entry.since) >= self.window {
                *entry = Entry {
                    failures: 1,
                    since: now,
                };
            } else if entry.failures >= self.limit {
                return Err(entry.since + self.window - now);
            } else {
                entry.failures += 1;
            }
            let since = entry.since;
            return Ok(self.attempt(key, since));
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
        Ok(self.attempt(key, now))
    }

    fn attempt(&self, key: &str, since: Instant) -> Attempt<'_> {
        Attempt {
            throttle: self,
            key: key.to_owned(),
            since,
            kept: false,
        }
    }

    /// Takes back one attempt of `key` counted in the window that began at `since` (not one of
    /// a later window, nor of an entry evicted since).
    fn release(&self, key: &str, since: Instant) {
        let mut table = self.lock();
        if let Some(entry) = table.get_mut(key).filter(|e| e.since == since) {
            entry.failures = entry.failures.saturating_sub(1);
            if entry.failures == 0 {
                table.remove(key);
            }
        }
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

/// One attempt counted by [`Throttle::reserve`]: kept by [`Attempt::failed`], taken back when
/// dropped otherwise.
#[derive(Debug)]
#[must_use = "an attempt dropped at once is taken back"]
pub struct Attempt<'a> {
    throttle: &'a Throttle,
    key: String,
    since: Instant,
    kept: bool,
}

impl Attempt<'_> {
    /// Keeps the attempt counted: it failed (or, for attempts limited whatever their outcome,
    /// it was made).
    pub fn failed(mut self) {
        self.kept = true;
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.throttle.release(&self.key, self.since);
        }
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
            throttle.reserve("a", start).expect("allowed").failed();
        }
        let later = start + Duration::from_secs(20);
        assert_eq!(
            throttle.reserve("a", later).map(drop),
            Err(Duration::from_secs(40))
        );
        assert!(
            throttle.reserve("b", later).is_ok(),
            "other keys are not held"
        );
        let after = start + Duration::from_secs(60);
        throttle.reserve("a", after).expect("a new window").failed();
        assert!(throttle.reserve("a", after).is_ok(), "a new window starts");
        throttle.forget("a");
        throttle.forget("b");
        assert!(throttle.is_empty());
    }

    #[test]
    fn attempts_in_flight_count_before_their_outcome_and_a_success_is_taken_back() {
        let throttle = Throttle::new(3, Duration::from_secs(60), 100);
        let now = Instant::now();
        let in_flight: Vec<_> = (0..3)
            .map(|_| throttle.reserve("a", now).expect("allowed"))
            .collect();
        assert!(
            throttle.reserve("a", now).is_err(),
            "three attempts in flight use up the window"
        );
        let mut in_flight = in_flight.into_iter();
        drop(in_flight.next());
        let fourth = throttle
            .reserve("a", now)
            .expect("a success frees its place");
        for attempt in in_flight.chain([fourth]) {
            attempt.failed();
        }
        assert!(throttle.reserve("a", now).is_err(), "failures stay counted");
    }

    #[test]
    fn the_table_never_holds_more_than_its_capacity() {
        let throttle = Throttle::new(3, Duration::from_secs(60), 100);
        let start = Instant::now();
        for i in 0..1_000 {
            throttle
                .reserve(&format!("key{i}"), start + Duration::from_millis(i))
                .expect("allowed")
                .failed();
            assert!(throttle.len() <= 100);
        }
        assert_eq!(throttle.len(), 100);
        for _ in 0..2 {
            throttle
                .reserve("key999", start + Duration::from_secs(1))
                .expect("allowed")
                .failed();
        }
        assert!(
            throttle
                .reserve("key999", start + Duration::from_secs(2))
                .is_err(),
            "the newest keys are kept"
        );
    }
}
