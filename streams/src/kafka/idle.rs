//! Idle consumers of an embedded broker in their own process pause until a write wakes them.
//!
//! librdkafka's mock answers a fetch that finds nothing only when `fetch.wait.max.ms` is over
//! (it never wakes a waiting fetch when records arrive), so an idle consumer asks again every
//! wait, and the short waits that keep a saga's latency low cost the idle one-process system
//! a tenth of a core. A consumer of a broker started in this process pauses its partitions
//! once it has heard nothing for [`QUIET`]: no record, and no write acknowledged to any
//! producer of this process by a broker of this process (one count for them all, so a write
//! to another keeps it awake for nothing). It resumes at the next such write, or after
//! [`LOOK_EVERY`] to see what writers in other processes sent. A consumer of any other broker
//! never pauses: a real broker answers a waiting fetch as soon as a record arrives.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use tokio::sync::Notify;

/// How long a consumer hears nothing before it pauses.
pub const QUIET: Duration = Duration::from_secs(1);

/// How often a paused consumer looks for records written by other processes: the most such a
/// record waits when everything here is idle.
pub const LOOK_EVERY: Duration = Duration::from_secs(1);

/// How long a consumer woken only to look stays awake: a few of the one-process system's
/// fetch waits (5 ms; 10 ms for global tables), and a fetch that finds records is answered at
/// once.
const LOOK_FOR: Duration = Duration::from_millis(20);

/// The bootstrap lists of the embedded brokers running in this process.
static LOCAL: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Writes acknowledged by a local broker so far.
static WRITES: AtomicU64 = AtomicU64::new(0);

/// Wakes every paused consumer at a local write.
static WRITTEN: Notify = Notify::const_new();

/// Consumers waiting in [`Quiet::wait`]: a write with none waiting (a busy system) skips
/// [`WRITTEN`], whose waiter list is behind a lock every producer would take per delivery.
static WAITING: AtomicUsize = AtomicUsize::new(0);

/// One consumer counted in [`WAITING`] while it lives, however its wait ends (it may be
/// dropped unfinished in a `select!`).
struct Waiting;

impl Waiting {
    fn start() -> Self {
        WAITING.fetch_add(1, Ordering::SeqCst);
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        WAITING.fetch_sub(1, Ordering::SeqCst);
    }
}

fn local() -> std::sync::MutexGuard<'static, Vec<String>> {
    // A list of strings, pushed and removed whole: a panic elsewhere cannot leave it half-done.
    LOCAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Notes an embedded broker started in this process.
pub(crate) fn started(bootstrap: &str) {
    local().push(bootstrap.to_owned());
}

/// Notes that the embedded broker of `bootstrap` stopped.
pub(crate) fn stopped(bootstrap: &str) {
    let mut local = local();
    if let Some(at) = local.iter().position(|b| b == bootstrap) {
        local.swap_remove(at);
    }
}

/// Whether `bootstrap` is an embedded broker running in this process.
pub fn is_local(bootstrap: &str) -> bool {
    local().iter().any(|b| b == bootstrap)
}

/// Tells paused consumers that a local broker acknowledged a write: a producer of a local
/// broker calls it after every delivery.
pub fn wrote() {
    WRITES.fetch_add(1, Ordering::SeqCst);
    // A waiter counts itself before it reads WRITES, and this reads WAITING after counting the
    // write (both sequentially consistent): either it sees this write or this sees it.
    if WAITING.load(Ordering::SeqCst) > 0 {
        WRITTEN.notify_waiters();
    }
}

/// One consumer's view of how long it has heard nothing.
#[derive(Debug)]
pub struct Quiet {
    /// Whether the consumer reads a local broker; `false`: never idle.
    local: bool,
    /// [`WRITES`] when last looked at.
    seen: u64,
    /// When the consumer last heard something.
    since: Instant,
}

impl Quiet {
    /// For a consumer of `bootstrap`, which has just heard something.
    pub fn new(bootstrap: &str) -> Self {
        Quiet {
            local: is_local(bootstrap),
            seen: WRITES.load(Ordering::SeqCst),
            since: Instant::now(),
        }
    }

    /// The consumer received a record.
    pub fn heard(&mut self) {
        // Read only by `is_idle`, which answers no for any other broker: no clock read there.
        if self.local {
            self.since = Instant::now();
        }
    }

    /// Whether the consumer should pause now: it reads a local broker and has heard nothing,
    /// not even a write to a local broker, for [`QUIET`]. A write it has not seen yet restarts
    /// the quiet time, so a record written before the pause was fetched for that long first.
    pub fn is_idle(&mut self) -> bool {
        if !self.local {
            return false;
        }
        let writes = WRITES.load(Ordering::SeqCst);
        if writes != self.seen {
            self.seen = writes;
            self.since = Instant::now();
            return false;
        }
        self.since.elapsed() >= QUIET
    }

    /// Waits for a local write, or [`LOOK_EVERY`]; afterwards the consumer is awake again, for
    /// [`QUIET`] after a write and for a few fetch waits after looking.
    pub async fn wait(&mut self) {
        let _waiting = Waiting::start();
        let written = WRITTEN.notified();
        tokio::pin!(written);
        // Registered before the count is read, so a write in between still wakes it.
        written.as_mut().enable();
        let woken_by_write = WRITES.load(Ordering::SeqCst) != self.seen
            || tokio::time::timeout(LOOK_EVERY, written).await.is_ok();
        self.seen = WRITES.load(Ordering::SeqCst);
        let now = Instant::now();
        self.since = if woken_by_write {
            now
        } else {
            now.checked_sub(QUIET.saturating_sub(LOOK_FOR))
                .unwrap_or(now)
        };
    }
}

/// How long a resumed consumer waits for the broker's answer that wakes its fetcher.
const WAKE_TIMEOUT: Duration = Duration::from_millis(500);

/// Pauses (or resumes) every partition `consumer` is assigned now. A partition assigned while
/// the others were paused is resumed like them, which does nothing.
///
/// Resuming also asks the leader of one partition for its offsets, and waits for the answer
/// (a round trip to a broker in this process): librdkafka's resume only clears a flag, and the
/// thread that fetches from that broker, idle, looks at its partitions again only when
/// something arrives for it or after up to a second. That answer is something.
pub fn set_paused<C: rdkafka::consumer::ConsumerContext>(
    consumer: &impl Consumer<C>,
    paused: bool,
) {
    let Ok(assigned) = consumer.assignment() else {
        return;
    };
    let Some(first) = assigned
        .elements()
        .first()
        .map(|p| (p.topic().to_owned(), p.partition()))
    else {
        return;
    };
    let done = if paused {
        consumer.pause(&assigned)
    } else {
        consumer.resume(&assigned)
    };
    if let Err(error) = done {
        // Fetching goes on as before: idle costs more, nothing is missed.
        tracing::debug!(%error, paused, "Pausing or resuming an idle consumer failed");
    } else if !paused {
        let _ = consumer.fetch_watermarks(&first.0, first.1, WAKE_TIMEOUT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Other tests of this crate write to local brokers at any time: an assertion that a write
    /// would change holds only when none came.
    fn writes() -> u64 {
        WRITES.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn a_consumer_of_a_local_broker_pauses_when_quiet_and_a_write_wakes_it() {
        started("idle-test:1");
        let mut quiet = Quiet::new("idle-test:1");
        assert!(!quiet.is_idle(), "it has just heard something");
        quiet.since -= QUIET;
        let before = writes();
        assert!(quiet.is_idle() || writes() != before);

        quiet.since -= QUIET;
        wrote();
        assert!(
            !quiet.is_idle(),
            "a write it has not seen restarts the quiet time"
        );

        quiet.since -= QUIET;
        let waiting = tokio::spawn(async move {
            quiet.wait().await;
            quiet
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let writing = Instant::now();
        wrote();
        let mut quiet = waiting.await.expect("the waiter ran");
        assert!(
            writing.elapsed() < LOOK_EVERY,
            "the write woke it, not the look-again timer"
        );
        assert!(!quiet.is_idle(), "awake for the quiet time after a write");
        stopped("idle-test:1");
        assert!(!is_local("idle-test:1"));
    }

    #[tokio::test]
    async fn a_consumer_woken_to_look_is_awake_for_a_few_fetch_waits_only() {
        started("idle-test:2");
        let mut quiet = Quiet::new("idle-test:2");
        let before = writes();
        let waiting = Instant::now();
        quiet.wait().await;
        if writes() == before {
            assert!(waiting.elapsed() >= LOOK_EVERY);
            assert!(!quiet.is_idle(), "awake right after looking");
            tokio::time::sleep(LOOK_FOR).await;
            assert!(
                quiet.is_idle() || writes() != before,
                "idle again soon after"
            );
        }
        stopped("idle-test:2");
    }

    #[test]
    fn a_consumer_of_another_broker_is_never_idle() {
        let mut quiet = Quiet::new("kafka.example:9092");
        quiet.since -= QUIET * 10;
        assert!(!quiet.is_idle());
    }
}
