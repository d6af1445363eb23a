//! The time-out sweep: announces `BookingTimedOut`, once, for every saga past its deadline that
//! still awaits it.
//!
//! The saga acts on the announcement when it comes back through the log, so the decision is
//! replayed like any other; an announcement lost or repeated changes nothing. Past a saga's
//! deadline the sweep reads the saga itself, and announces only one the time-out would still
//! change ([`crate::Saga::awaits_deadline`]): once the saga has applied a time-out, asked the
//! charge or begun to cancel, it is no longer announced, though it stays open (unfinished)
//! until it ends.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use events::{BookingTimedOut, now_millis, topics};
use streams::kafka::{Metadata, Producer};
use streams::processor::Positions;
use streams::store::{Scope, Store};

use crate::handler::{OPEN, Open};
use crate::query;

/// How long a saga may take from its request before its open steps are undone.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// How often open sagas are checked against their deadline.
const SWEEP: Duration = Duration::from_millis(500);

/// How long an announcement the broker acknowledged is trusted to come back before it is sent
/// again. Acknowledged, it is in the log, and a saga still awaiting its deadline after it means
/// the consumer is behind: sending it again would only add to what it has to read. Minutes,
/// not seconds, so only a record lost after all (or dead-lettered) is announced again.
const ANNOUNCE_AGAIN: Duration = Duration::from_secs(300);

/// Sweeps every [`SWEEP`] until `stopped` turns true.
///
/// Only sagas of the tasks the processor holds now (`positions`) are looked at: what the store
/// still holds of tasks another instance took over is stale, and theirs to time out.
pub(crate) async fn sweep(
    store: Store,
    producer: Producer,
    timeout: Duration,
    positions: Positions,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
    // The announcements acknowledged, by booking id. Rebuilt on every sweep from the sagas
    // still open, so it never holds more than the open index does.
    let mut announced: HashMap<String, Instant> = HashMap::new();
    // An entry or saga that does not decode is reported once, not on every sweep.
    let mut unreadable: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            () = tokio::time::sleep(SWEEP) => {}
        }
        let tasks: BTreeSet<i32> = positions.snapshot().keys().map(|(_, p)| *p).collect();
        let open = tasks
            .into_iter()
            .map(|task| store.scan_in(Scope::Task(task), OPEN.as_bytes()))
            .collect::<streams::Result<Vec<_>>>()
            .map(|open| open.into_iter().flatten().collect::<Vec<_>>());
        let open = match open {
            Ok(open) => open,
            Err(error) => {
                tracing::warn!(%error, "Cannot read open sagas");
                continue;
            }
        };
        let now = now_millis();
        let mut still_announced = HashMap::new();
        let mut still_unreadable = HashSet::new();
        for (key, value) in open {
            let booking_id = String::from_utf8_lossy(&key[OPEN.len()..]).into_owned();
            let (user_id, requested_at) = match serde_json::from_slice::<Open>(&value) {
                Ok(open) => open,
                Err(error) => {
                    if !unreadable.contains(&booking_id) {
                        tracing::error!(
                            %error,
                            booking_id,
                            "An open saga's entry is unreadable; it cannot time out"
                        );
                    }
                    still_unreadable.insert(booking_id);
                    continue;
                }
            };
            let deadline = requested_at.saturating_add(timeout_ms);
            if deadline > now {
                continue;
            }
            if let Some(at) = announced.remove(&booking_id)
                && at.elapsed() < ANNOUNCE_AGAIN
            {
                still_announced.insert(booking_id, at);
                continue;
            }
            match query::saga(&store, &booking_id) {
                Ok(Some(saga)) if saga.awaits_deadline() => {}
                // Timed out already, charging or cancelling: a time-out changes nothing now.
                Ok(_) => continue,
                Err(error) => {
                    if !unreadable.contains(&booking_id) {
                        tracing::error!(%error, booking_id, "An open saga is unreadable");
                    }
                    still_unreadable.insert(booking_id);
                    continue;
                }
            }
            let event = BookingTimedOut {
                booking_id: booking_id.clone(),
                user_id,
                deadline,
            };
            match producer
                .send(topics::BOOKINGS, &event, &Metadata::new(&booking_id))
                .await
            {
                Ok(_) => {
                    tracing::info!(booking_id, "Saga timed out");
                    still_announced.insert(booking_id, Instant::now());
                }
                // Not noted: the next sweep tries again.
                Err(error) => tracing::warn!(%error, booking_id, "Cannot announce a time-out"),
            }
        }
        announced = still_announced;
        unreadable = still_unreadable;
    }
}
