//! One request at a time per booking id: what makes an `Idempotency-Key`'s look-up and send
//! one step, so that a second request with the key sees what the first one sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Ids kept before the ones nobody holds are swept out.
pub const MAX_IDLE: usize = 1_000;

/// The booking ids being claimed, each with the lock its requests queue on.
#[derive(Debug, Default)]
pub struct Claims {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A held claim on a booking id; dropping it (also when the request is broken off) lets the
/// next request for the id go, and forgets the id once nobody waits for it.
#[derive(Debug)]
pub struct Claim {
    claims: Arc<Claims>,
    booking_id: String,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Claims {
    /// Waits until no other request holds `booking_id`, then holds it.
    pub async fn take(self: &Arc<Self>, booking_id: &str) -> Claim {
        let lock = {
            let mut locks = streams::sync::lock(&self.locks);
            if locks.len() >= MAX_IDLE {
                // A request broken off while it waited leaves its id behind when the holder
                // had already gone: swept here, so the map stays bounded.
                locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            }
            locks.entry(booking_id.to_owned()).or_default().clone()
        };
        Claim {
            claims: self.clone(),
            booking_id: booking_id.to_owned(),
            held: Some(lock.lock_owned().await),
        }
    }

    /// How many ids are known (held, waited for, or left behind).
    pub fn len(&self) -> usize {
        streams::sync::lock(&self.locks).len()
    }

    /// Whether no id is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        drop(self.held.take());
        let mut locks = streams::sync::lock(&self.claims.locks);
        // Only the map holds it: nobody holds or waits for the id (clones are taken under
        // this same lock).
        if locks
            .get(&self.booking_id)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            locks.remove(&self.booking_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_request_for_an_id_waits_until_the_first_lets_go_and_then_the_id_is_forgotten()
    {
        use futures::FutureExt as _;
        let claims = Arc::new(Claims::default());
        let first = claims.take("b-1").await;
        assert!(claims.take("b-1").now_or_never().is_none(), "b-1 is held");
        // Another id is not held up by b-1.
        assert!(claims.take("b-2").now_or_never().is_some());
        drop(first);
        let second = claims
            .take("b-1")
            .now_or_never()
            .expect("b-1 is free again");
        drop(second);
        assert!(claims.is_empty());
    }

    #[tokio::test]
    async fn requests_broken_off_while_waiting_leave_a_bounded_number_of_ids_behind() {
        use futures::FutureExt as _;
        let claims = Arc::new(Claims::default());
        for i in 0..3 * MAX_IDLE {
            let id = format!("b-{i}");
            let first = claims.take(&id).await;
            // A second request for the id waits, the first lets go, and the second is broken
            // off before it runs again: nobody is left to forget the id.
            let mut second = Box::pin(claims.take(&id));
            assert!((&mut second).now_or_never().is_none());
            drop(first);
            drop(second);
            assert!(claims.len() <= MAX_IDLE + 1, "{} ids", claims.len());
        }
    }
}
