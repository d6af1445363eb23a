//! The time-out sweep: announces `BookingTimedOut` for every open saga past its deadline.
//!
//! The saga acts on the announcement when it comes back through the log, so the decision is
//! replayed like any other; an announcement lost or repeated changes nothing.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use events::{BookingTimedOut, now_millis, topics};
use streams::kafka::{Metadata, Producer};
use streams::store::Store;

use crate::handler::{OPEN, Open};

/// How long a saga may take from its request before its open steps are undone.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// How often open sagas are checked against their deadline.
const SWEEP: Duration = Duration::from_millis(500);

/// How long before a time-out that has not taken effect is announced again.
const ANNOUNCE_AGAIN: Duration = Duration::from_secs(10);

/// Sweeps every [`SWEEP`] until `stopped` turns true.
pub(crate) async fn sweep(
    store: Store,
    producer: Producer,
    timeout: Duration,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
    let mut announced: HashMap<String, Instant> = HashMap::new();
    // An entry that does not decode is reported once, not on every sweep.
    let mut unreadable: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            () = tokio::time::sleep(SWEEP) => {}
        }
        let open = match store.scan(OPEN.as_bytes()) {
            Ok(open) => open,
            Err(error) => {
                tracing::warn!(%error, "Cannot read open sagas");
                continue;
            }
        };
        let now = now_millis();
        announced.retain(|_, at| at.elapsed() < ANNOUNCE_AGAIN);
        for (key, value) in open {
            let booking_id = String::from_utf8_lossy(&key[OPEN.len()..]).into_owned();
            let (user_id, requested_at) = match serde_json::from_slice::<Open>(&value) {
                Ok(open) => open,
                Err(error) => {
                    if unreadable.insert(booking_id.clone()) {
                        tracing::error!(
                            %error,
                            booking_id,
                            "An open saga's entry is unreadable; it cannot time out"
                        );
                    }
                    continue;
                }
            };
            let deadline = requested_at.saturating_add(timeout_ms);
            if deadline > now || announced.contains_key(&booking_id) {
                continue;
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
                    announced.insert(booking_id, Instant::now());
                }
                Err(error) => tracing::warn!(%error, booking_id, "Cannot announce a time-out"),
            }
        }
    }
}
