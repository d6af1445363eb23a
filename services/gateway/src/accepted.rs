//! Bookings the gateway accepted that its view has not read back yet, bounded in number and age.
//!
//! An entry only bridges the moment between the 202 and the view reading the request from
//! `bookings` (milliseconds when all is well), so that a client polling at once sees `PENDING`,
//! not 404. Entries the view holds are dropped as new ones arrive, whether or not anyone asked
//! for the booking; so are entries older than [`MAX_AGE`] and, beyond [`CAPACITY`], the oldest.
//! Dropping one early costs only that: a poll answers 404 until the view has the booking.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::view::BookingView;

/// At most this many accepted bookings are held (a few hundred bytes each).
pub const CAPACITY: usize = 10_000;

/// An accepted booking the view has not read back within this is not held any longer.
pub const MAX_AGE: Duration = Duration::from_secs(600);

/// The accepted bookings, oldest first.
#[derive(Debug)]
pub struct Accepted {
    entries: HashMap<String, (Instant, BookingView)>,
    /// Booking ids in the order they were accepted; an id whose entry was taken out since
    /// (read from the view) is skipped when it comes up.
    order: VecDeque<(Instant, String)>,
    capacity: usize,
    max_age: Duration,
}

impl Default for Accepted {
    fn default() -> Self {
        Accepted::new(CAPACITY, MAX_AGE)
    }
}

impl Accepted {
    /// Holding at most `capacity` bookings, none longer than `max_age`.
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        Accepted {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            max_age,
        }
    }

    /// The booking accepted as `booking_id`.
    pub fn get(&self, booking_id: &str) -> Option<&BookingView> {
        self.entries.get(booking_id).map(|(_, view)| view)
    }

    /// Forgets a booking (the view has it now).
    pub fn remove(&mut self, booking_id: &str) {
        self.entries.remove(booking_id);
    }

    /// Every booking held.
    pub fn values(&self) -> impl Iterator<Item = &BookingView> {
        self.entries.values().map(|(_, view)| view)
    }

    /// How many bookings are held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Holds `view`, accepted at `now`, then drops from the oldest end what need not be held
    /// any more: entries `in_view` says the view has, entries older than the maximum age, and
    /// any beyond the capacity. Stops at the first entry that must stay, so each call does
    /// little work (the view reads bookings in about the order they were accepted).
    pub fn insert(&mut self, view: BookingView, now: Instant, in_view: impl Fn(&str) -> bool) {
        let id = view.booking_id.clone();
        self.entries.insert(id.clone(), (now, view));
        self.order.push_back((now, id));
        if self.order.len() > 2 * self.capacity {
            // Ids of entries read since pile up behind one that stays: sweep them out, once
            // per `capacity` inserts at most.
            let entries = &self.entries;
            self.order
                .retain(|(at, id)| entries.get(id).is_some_and(|(held, _)| held == at));
        }
        while let Some((at, id)) = self.order.front() {
            let current = self.entries.get(id).is_some_and(|(held, _)| held == at);
            let expired = now.saturating_duration_since(*at) > self.max_age;
            if current && !expired && self.entries.len() <= self.capacity && !in_view(id) {
                break;
            }
            if current {
                self.entries.remove(id);
            }
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::tests::pending_booking;

    #[test]
    fn bookings_nobody_reads_are_held_up_to_the_capacity_then_the_oldest_go() {
        let mut accepted = Accepted::new(100, MAX_AGE);
        let now = Instant::now();
        for i in 0..1_000 {
            accepted.insert(pending_booking(&format!("b-{i}")), now, |_| false);
            assert!(accepted.len() <= 100, "{} held", accepted.len());
            assert!(accepted.order.len() <= 100, "{} ids", accepted.order.len());
        }
        assert!(accepted.get("b-899").is_none(), "the oldest went");
        assert!(accepted.get("b-999").is_some(), "the newest stays");
    }

    #[test]
    fn bookings_the_view_has_are_dropped_as_new_ones_arrive_though_nobody_read_them() {
        let mut accepted = Accepted::new(100, MAX_AGE);
        let now = Instant::now();
        accepted.insert(pending_booking("b-1"), now, |_| false);
        accepted.insert(pending_booking("b-2"), now, |_| false);
        // The view has read b-1 and b-2 back by the time b-3 is accepted.
        accepted.insert(pending_booking("b-3"), now, |id| id != "b-3");
        assert_eq!(accepted.len(), 1);
        assert!(accepted.get("b-3").is_some());
    }

    #[test]
    fn bookings_older_than_the_maximum_age_are_dropped() {
        let mut accepted = Accepted::new(100, Duration::from_secs(60));
        let start = Instant::now();
        accepted.insert(pending_booking("old"), start, |_| false);
        accepted.insert(
            pending_booking("young"),
            start + Duration::from_secs(30),
            |_| false,
        );
        accepted.insert(
            pending_booking("new"),
            start + Duration::from_secs(61),
            |_| false,
        );
        assert!(accepted.get("old").is_none());
        assert!(accepted.get("young").is_some() && accepted.get("new").is_some());
    }

    #[test]
    fn ids_taken_out_by_reads_do_not_pile_up_behind_one_that_stays() {
        let mut accepted = Accepted::new(10, MAX_AGE);
        let now = Instant::now();
        accepted.insert(pending_booking("stuck"), now, |_| false);
        for i in 0..1_000 {
            let id = format!("b-{i}");
            accepted.insert(pending_booking(&id), now, |_| false);
            accepted.remove(&id);
            assert!(accepted.order.len() <= 20, "{} ids", accepted.order.len());
        }
        assert_eq!(accepted.len(), 1);
        assert!(
            accepted.get("stuck").is_some(),
            "reads elsewhere do not push it out"
        );
    }
}
