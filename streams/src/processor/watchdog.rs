//! Asks for a new assignment when a task of the group has records waiting that nobody takes:
//! a coordinator that dropped a member without a rebalance.
//!
//! Every member commits the offsets of the tasks it holds each second, so a task whose records
//! wait while its committed offset stays put for longer than a session timeout has no live
//! owner: on a broker that runs the group protocol its tasks would have moved by then. Tansu
//! 0.6.0 does not move them: its coordinator drops a member that missed its session timeout
//! without a new generation, the survivors keep their old tasks, and the departed member's stay
//! unowned for good (ARCHITECTURE.md, "Brokers"). It does rebalance when a member leaves and a
//! new one joins, so the processor leaves the group and joins again, which any broker answers
//! with a full rebalance. Describing the group would say more, but Tansu 0.6.0 drops the
//! connection on `DescribeGroups`.
//!
//! Tansu 0.6.0 does start a rebalance when it expires a member at a survivor's heartbeat, but
//! when the expired member led the group it keeps it as leader: the survivors' joins wait 3 s
//! for it and are answered with the old generation and the old assignment. Only a member that
//! leaves and joins with a new member id becomes leader. So on Tansu (known by its default
//! cluster id) a revocation that comes while records have waited half a session timeout in
//! tasks this member does not hold is answered the same way, without waiting for the full
//! verdict ([`Verdicts::rejoin_on_revocation`]).
//!
//! After this member's tasks change, every wait starts again, so a task's new owner has as long
//! to restore it and commit. An owner that is alive but stuck (retrying one record, or
//! restoring, for longer than that) also looks unowned; the rejoins are then spaced out, from
//! [`LEAST_BETWEEN`] doubling to [`MOST_BETWEEN`].

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::error::{Error, Result};

/// How often the offsets of the tasks this member does not hold are read (two requests).
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// How long past the session timeout records may wait in a task: by then its old owner's
/// membership has expired at the coordinator (at a survivor's next heartbeat, every second by
/// default here), so joining again is answered without it.
const MARGIN: Duration = Duration::from_secs(1);

/// The first wait after a rejoin before another, doubled up to [`MOST_BETWEEN`] until no
/// records have waited too long for [`MOST_BETWEEN`]: each rejoin rebalances the whole group,
/// and a rebalance of a busy group can leave records waiting for a while itself.
const LEAST_BETWEEN: Duration = Duration::from_secs(5);
const MOST_BETWEEN: Duration = Duration::from_secs(60);

/// A blocking task reading the group's committed offsets every [`LOOK_EVERY`];
/// [`Watchdog::take_rejoin`] says when the processor should leave and join again. Stops when
/// dropped.
pub(crate) struct Watchdog {
    rejoin: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

/// What the watchdog has seen and when it last had the processor join again, shared with the
/// rebalance callback so that both space their rejoins alike.
#[derive(Debug)]
pub(crate) struct Verdicts {
    session_timeout: Duration,
    /// Whether the coordinator keeps an expired leader (Tansu 0.6.0), so that a revocation is
    /// answered by joining as a new member. Elsewhere the coordinator's own rebalance is right,
    /// and leaving would cost it: with every survivor gone the group would be empty, and Kafka
    /// waits `group.initial.rebalance.delay.ms` (3 s) before it forms an empty group again.
    keeps_expired_leader: bool,
    state: Mutex<VerdictState>,
}

#[derive(Debug)]
struct VerdictState {
    /// Since when records have waited in a task this member does not hold, at the last look.
    unowned_since: Option<Instant>,
    not_before: Instant,
    between: Duration,
    last_rejoin: Option<Instant>,
}

impl Verdicts {
    /// `session_timeout` is the one in effect: how long a dead member keeps its tasks.
    pub(crate) fn new(session_timeout: Duration, keeps_expired_leader: bool) -> Self {
        Verdicts {
            session_timeout,
            keeps_expired_leader,
            state: Mutex::new(VerdictState {
                unowned_since: None,
                not_before: Instant::now(),
                between: LEAST_BETWEEN,
                last_rejoin: None,
            }),
        }
    }

    /// Whether a revocation the coordinator began at `now` should be answered by leaving and
    /// joining again as a new member: records have waited half a session timeout in tasks this
    /// member does not hold (their owner is most likely the member being expired), and no
    /// rejoin happened too recently; only on a coordinator that keeps an expired leader.
    /// Counts as a rejoin when it says yes.
    pub(crate) fn rejoin_on_revocation(&self, now: Instant) -> bool {
        if !self.keeps_expired_leader {
            return false;
        }
        let mut state = crate::sync::lock(&self.state);
        let unowned = state
            .unowned_since
            .is_some_and(|since| now.duration_since(since) >= self.session_timeout / 2);
        if unowned && now >= state.not_before {
            state.rejoined(now);
            true
        } else {
            false
        }
    }
}

impl VerdictState {
    fn rejoined(&mut self, now: Instant) {
        self.last_rejoin = Some(now);
        self.not_before = now + self.between;
        self.between = (self.between * 2).min(MOST_BETWEEN);
    }
}

/// What the watching task needs to know of the processor.
pub(crate) struct Watched {
    pub(crate) group: String,
    /// The group's input topics.
    pub(crate) topics: Vec<String>,
    /// Tasks of the group (partitions of each input topic).
    pub(crate) tasks: usize,
    /// The tasks this member holds, restoring or processing (see the rebalance callback).
    pub(crate) held: Arc<Mutex<BTreeSet<i32>>>,
    pub(crate) verdicts: Arc<Verdicts>,
}

impl Watchdog {
    /// Starts watching `watched.group` on `bootstrap` with a client of its own (in the group
    /// only to read its offsets, never a member), so a look never waits on the processor's
    /// consumer. Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Kafka`] when the client cannot be created.
    pub(crate) fn start(bootstrap: &str, watched: Watched) -> Result<Self> {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", &watched.group)
            .set("enable.auto.commit", "false")
            .set("log_level", "3")
            .create()
            .map_err(|e| Error::kafka("creating the group watchdog's client", e))?;
        let rejoin = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        tokio::task::spawn_blocking({
            let (rejoin, stop) = (rejoin.clone(), stop.clone());
            move || watch(&client, &watched, &rejoin, &stop)
        });
        Ok(Watchdog { rejoin, stop })
    }

    /// Whether the processor should leave the group and join again (once per verdict).
    pub(crate) fn take_rejoin(&self) -> bool {
        self.rejoin.swap(false, Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Not waited for: a look in flight may wait for the broker, and the task ends on its
        // own after it.
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Since when records have waited in each partition while its committed offset stood still.
#[derive(Debug, Default)]
pub(crate) struct Standing {
    partitions: HashMap<(String, i32), (i64, Option<Instant>)>,
}

impl Standing {
    /// Notes a partition's `committed` offset (-1 when none) and `end` offset at `now`.
    pub(crate) fn note(
        &mut self,
        topic: &str,
        partition: i32,
        committed: i64,
        end: i64,
        now: Instant,
    ) {
        let (last, waiting) = self
            .partitions
            .entry((topic.to_owned(), partition))
            .or_insert((committed, None));
        if *last != committed {
            *last = committed;
            *waiting = None;
        }
        if end > committed.max(0) {
            waiting.get_or_insert(now);
        } else {
            *waiting = None;
        }
    }

    /// Partitions in which records have waited for at least `long` without their committed
    /// offset moving.
    pub(crate) fn waiting(&self, long: Duration, now: Instant) -> Vec<(String, i32)> {
        let mut found: Vec<_> = self
            .partitions
            .iter()
            .filter(|(_, (_, waiting))| {
                waiting.is_some_and(|since| now.duration_since(since) >= long)
            })
            .map(|(key, _)| key.clone())
            .collect();
        found.sort();
        found
    }

    /// Since when records have waited in the partition that has waited longest.
    pub(crate) fn oldest(&self) -> Option<Instant> {
        self.partitions
            .values()
            .filter_map(|(_, waiting)| *waiting)
            .min()
    }

    /// Forgets the partitions of the tasks in `held`: this member holds them, and whether it
    /// keeps up is its own business.
    pub(crate) fn forget(&mut self, held: &BTreeSet<i32>) {
        self.partitions
            .retain(|(_, partition), _| !held.contains(partition));
    }
}

fn watch(client: &BaseConsumer, watched: &Watched, rejoin: &AtomicBool, stop: &AtomicBool) {
    let timeout = Duration::from_secs(5);
    let long = watched.verdicts.session_timeout + MARGIN;
    let mut standing = Standing::default();
    let mut last_held = BTreeSet::new();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(LOOK_EVERY);
        let held = crate::sync::lock(&watched.held).clone();
        if !held.is_empty() && held != last_held {
            // A rebalance moved tasks: their new owners get a full wait to restore them and
            // commit. The moment between a revocation and the next assignment is skipped:
            // Tansu's rebalance after a member's death hands everyone its old tasks back, and
            // must restart nothing.
            standing = Standing::default();
            last_held.clone_from(&held);
        }
        standing.forget(&held);
        crate::sync::lock(&watched.verdicts.state).unowned_since = standing.oldest();
        let mut others = TopicPartitionList::new();
        for topic in &watched.topics {
            for task in (0..watched.tasks).filter_map(|t| i32::try_from(t).ok()) {
                if !held.contains(&task) {
                    let _ = others.add_partition_offset(topic, task, Offset::End);
                }
            }
        }
        if others.count() == 0 {
            continue;
        }
        let looked = client
            .committed_offsets(others.clone(), timeout)
            .and_then(|committed| Ok((committed, client.offsets_for_times(others, timeout)?)));
        let (committed, ends) = match looked {
            Ok(looked) => looked,
            Err(error) => {
                tracing::debug!(%error, group = %watched.group, "Reading the group's offsets failed");
                continue;
            }
        };
        let now = Instant::now();
        let offset = |offset: Offset| match offset {
            Offset::Offset(offset) => offset,
            _ => -1,
        };
        for element in committed.elements() {
            let (topic, partition) = (element.topic(), element.partition());
            let end = ends
                .find_partition(topic, partition)
                .map_or(-1, |end| offset(end.offset()));
            standing.note(topic, partition, offset(element.offset()), end, now);
        }
        let waiting = standing.waiting(long, now);
        let mut state = crate::sync::lock(&watched.verdicts.state);
        state.unowned_since = standing.oldest();
        if waiting.is_empty() {
            if state
                .last_rejoin
                .is_some_and(|at| now.duration_since(at) >= MOST_BETWEEN)
            {
                state.between = LEAST_BETWEEN;
                state.last_rejoin = None;
            }
            continue;
        }
        if now >= state.not_before {
            let partitions: Vec<String> = waiting.iter().map(|(t, p)| format!("{t}/{p}")).collect();
            tracing::warn!(
                group = %watched.group,
                partitions = %partitions.join(", "),
                seconds = long.as_secs(),
                "Records have waited in partitions this long without their committed offsets \
                 moving (their owner left without a rebalance?): leaving the group and joining \
                 again"
            );
            rejoin.store(true, Ordering::SeqCst);
            state.rejoined(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_count_as_waiting_from_when_they_are_first_seen_until_the_committed_offset_moves() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let long = Duration::from_secs(7);
        let mut standing = Standing::default();
        // Partition 0 idle for long, then a record arrives at 10 s; partition 1 taken at 3 s.
        standing.note("bookings", 0, 10, 10, at(0));
        standing.note("bookings", 1, -1, 2, at(0));
        standing.note("bookings", 1, 2, 3, at(3));
        standing.note("bookings", 0, 10, 11, at(10));
        standing.note("bookings", 1, 2, 3, at(10));
        assert_eq!(
            standing.waiting(long, at(10)),
            vec![("bookings".to_owned(), 1)]
        );
        assert_eq!(
            standing.waiting(long, at(16)),
            vec![("bookings".to_owned(), 1)]
        );
        assert_eq!(standing.waiting(long, at(17)).len(), 2);
        standing.note("bookings", 0, 11, 11, at(18));
        assert_eq!(
            standing.waiting(long, at(18)),
            vec![("bookings".to_owned(), 1)]
        );
        standing.forget(&BTreeSet::from([1]));
        assert!(
            standing.waiting(long, at(30)).is_empty(),
            "a held task is its owner's business"
        );
    }

    #[test]
    fn a_revocation_is_answered_by_rejoining_once_records_waited_half_a_session_and_not_twice_in_a_row()
     {
        let verdicts = Verdicts::new(Duration::from_secs(6), true);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert!(
            !verdicts.rejoin_on_revocation(at(10_000)),
            "nothing waits: an ordinary rebalance"
        );
        let mut standing = Standing::default();
        standing.note("payment.commands", 4, 7, 9, at(1_000));
        standing.note("payment.commands", 5, 3, 4, at(2_000));
        assert_eq!(standing.oldest(), Some(at(1_000)));
        crate::sync::lock(&verdicts.state).unowned_since = standing.oldest();
        assert!(!verdicts.rejoin_on_revocation(at(3_999)));
        assert!(verdicts.rejoin_on_revocation(at(4_000)));
        assert!(
            !verdicts.rejoin_on_revocation(at(5_000)),
            "the next rejoin waits LEAST_BETWEEN"
        );
        assert!(verdicts.rejoin_on_revocation(at(4_000) + LEAST_BETWEEN));
        assert!(
            !verdicts.rejoin_on_revocation(at(4_000) + LEAST_BETWEEN * 2),
            "then twice as long"
        );
        let kafka = Verdicts::new(Duration::from_secs(6), false);
        crate::sync::lock(&kafka.state).unowned_since = Some(at(0));
        assert!(
            !kafka.rejoin_on_revocation(at(60_000)),
            "a coordinator that rebalances properly is left to it"
        );
    }

    #[test]
    fn a_partition_never_committed_waits_once_it_has_a_record() {
        let start = Instant::now();
        let mut standing = Standing::default();
        standing.note("bookings", 0, -1, 0, start);
        assert!(standing.waiting(Duration::ZERO, start).is_empty());
        standing.note("bookings", 0, -1, 1, start);
        assert_eq!(standing.waiting(Duration::ZERO, start).len(), 1);
    }
}
