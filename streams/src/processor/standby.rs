//! Warm copies of the tasks this instance does not own, kept up from their changelogs so that
//! taking one over reads only what its owner wrote since the last catch-up.
//!
//! A blocking task of its own reads, every [`EVERY`], each such task's changelog from the
//! store's checkpoint on ([`Role::Standby`]: a commit its owner is still publishing is left for
//! the next look, never repaired), once this member holds tasks of its own. It takes the gate's
//! rewriting lock for each task and skips a task that became this member's meanwhile: the
//! rebalance callback marks a task held before it restores it under the same lock, so a task
//! is never caught up and processed at once. It assumes one processor per store, as every
//! service runs: a second processor sharing the store would see the first's tasks as unheld.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::restore::{Restored, Restorer, Role};
use crate::error::Result;
use crate::outbox::Gate;
use crate::store::Store;
use crate::store::changelog::Changelog;

/// How often the copies catch up.
const EVERY: Duration = Duration::from_secs(1);

/// The pause before each task's catch-up, lock released.
const YIELD: Duration = Duration::from_millis(5);

/// The standby task; stops when dropped.
pub(crate) struct Standby {
    stop: Arc<AtomicBool>,
}

/// What the standby task needs of the processor.
pub(crate) struct Copies {
    pub(crate) changelog: Arc<Changelog>,
    pub(crate) store: Store,
    /// Tasks of the group.
    pub(crate) tasks: usize,
    /// The tasks this member holds (set by the rebalance callback before it restores them).
    pub(crate) held: Arc<Mutex<BTreeSet<i32>>>,
    /// Its lock is held for one task's catch-up at a time; the rebalance callback holds it
    /// through an assignment's restore, the relay to record a checkpoint.
    pub(crate) gate: Gate,
}

impl Standby {
    /// Starts keeping copies of the tasks not held, reading on `bootstrap`, with a consumer
    /// of its own. Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Kafka`] when its changelog consumer cannot be created.
    pub(crate) fn start(bootstrap: &str, copies: Copies) -> Result<Self> {
        let restorer = Restorer::new(bootstrap, copies.changelog.clone())?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        tokio::task::spawn_blocking(move || keep_up(&restorer, &copies, &stopping));
        Ok(Standby { stop })
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        // Not waited for: a catch-up in flight may wait on the broker, and the task ends after it.
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn keep_up(restorer: &Restorer, copies: &Copies, stop: &AtomicBool) {
    let mut warm = BTreeSet::new();
    while !stop.load(Ordering::SeqCst) {
        for task in (0..copies.tasks).filter_map(|t| i32::try_from(t).ok()) {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            // Between tasks, a rebalance callback waiting for the lock gets it: std's mutex
            // is not fair, and a task's copy taken at once again would keep it waiting.
            std::thread::sleep(YIELD);
            let _rewriting = copies.gate.rewriting();
            let held = crate::sync::lock(&copies.held);
            // Holding nothing: before the first assignment, or between a revocation and the
            // next, when every task may be about to be this member's own.
            if held.is_empty() || held.contains(&task) {
                warm.remove(&task);
                continue;
            }
            drop(held);
            match restorer.restore(&copies.store, task, Role::Standby) {
                Ok(restored) => {
                    if warm.insert(task) {
                        let records = match restored {
                            Restored::Current => 0,
                            Restored::Read(records) => records,
                        };
                        tracing::info!(changelog = %copies.changelog.topic, task, records, "Keeping a warm copy of a task another instance owns");
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, changelog = %copies.changelog.topic, task, "Catching up a standby copy failed; trying again");
                }
            }
        }
        std::thread::sleep(EVERY);
    }
}
