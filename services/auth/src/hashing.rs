//! Password hashing with bounded memory: argon2 needs about 19 MiB a hash, so at most one hash
//! per core runs (on the blocking pool) and a short queue waits; past the queue a request is
//! refused at once ([`Busy`], answered 503) instead of taking more memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Semaphore;

/// The hashing gate is full: retry shortly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many logins and sign-ups are being checked; retry in a moment")]
pub struct Busy;

/// How many hashes run at once and how many may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Hashes running at once.
    pub running: usize,
    /// Hashes waiting for a place; one more is refused.
    pub queued: usize,
}

impl Default for Limits {
    /// One hash per core, and four per core waiting (a few hash times of delay at most).
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Limits {
            running: cores,
            queued: 4 * cores,
        }
    }
}

/// What the gate has done, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Jobs run to the end.
    pub runs: u64,
    /// Jobs running now.
    pub running: usize,
    /// The most that ever ran at once.
    pub peak: usize,
    /// Jobs waiting for a place now.
    pub queued: usize,
    /// Jobs refused because the queue was full.
    pub refused: u64,
}

/// The gate every password hash goes through. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Hashing {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Places to run.
    running: Arc<Semaphore>,
    /// Places to run or wait: a job that gets none is refused.
    admitted: Arc<Semaphore>,
    runs: AtomicU64,
    active: AtomicUsize,
    peak: AtomicUsize,
    queued: AtomicUsize,
    refused: AtomicU64,
}

impl Hashing {
    /// A gate with `limits` (each at least 1 running, 0 queued).
    pub fn new(limits: Limits) -> Self {
        let running = limits.running.max(1);
        Hashing {
            inner: Arc::new(Inner {
                running: Arc::new(Semaphore::new(running)),
                admitted: Arc::new(Semaphore::new(running + limits.queued)),
                runs: AtomicU64::new(0),
                active: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                queued: AtomicUsize::new(0),
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// Runs `job` on the blocking pool once a place is free.
    ///
    /// # Errors
    ///
    /// [`Busy`] at once when every place to run and to wait is taken.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let Ok(admitted) = Arc::clone(&self.inner.admitted).try_acquire_owned() else {
            self.inner.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Busy);
        };
        let waiting = Waiting::new(&self.inner.queued);
        let place = Arc::clone(&self.inner.running).acquire_owned().await;
        drop(waiting);
        // The semaphore is never closed.
        let Ok(place) = place else {
            return Err(Busy);
        };
        let inner = Arc::clone(&self.inner);
        // The places move into the job: a request given up while its hash runs still holds
        // them until the hash ends, so the bound counts every hash running, not every request.
        let done = tokio::task::spawn_blocking(move || {
            let active = inner.active.fetch_add(1, Ordering::SeqCst) + 1;
            inner.peak.fetch_max(active, Ordering::SeqCst);
            let out = job();
            inner.active.fetch_sub(1, Ordering::SeqCst);
            inner.runs.fetch_add(1, Ordering::SeqCst);
            drop((place, admitted));
            out
        })
        .await;
        match done {
            Ok(out) => Ok(out),
            // The job panicked: argon2 does not on any input; pass it on as it would have
            // been without the pool.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down.
            Err(_) => Err(Busy),
        }
    }

    /// What it has done so far.
    pub fn stats(&self) -> Stats {
        Stats {
            runs: self.inner.runs.load(Ordering::SeqCst),
            running: self.inner.active.load(Ordering::SeqCst),
            peak: self.inner.peak.load(Ordering::SeqCst),
            queued: self.inner.queued.load(Ordering::SeqCst),
            refused: self.inner.refused.load(Ordering::SeqCst),
        }
    }
}

/// Counts one job waiting while it lives, so that a request given up while it waits (the
/// client went away) is not counted as waiting forever.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(queued: &'a AtomicUsize) -> Self {
        queued.fetch_add(1, Ordering::SeqCst);
        Waiting(queued)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Default for Hashing {
    fn default() -> Self {
        Hashing::new(Limits::default())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    async fn until(hashing: &Hashing, done: impl Fn(Stats) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(hashing.stats()) {
            assert!(Instant::now() < deadline, "{:?}", hashing.stats());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_job_given_up_while_it_waits_frees_its_place_in_the_queue() {
        let hashing = Hashing::new(Limits {
            running: 1,
            queued: 1,
        });
        let (release, released) = std::sync::mpsc::channel::<()>();
        let held = tokio::spawn({
            let hashing = hashing.clone();
            async move { hashing.run(move || released.recv()).await }
        });
        until(&hashing, |s| s.running == 1).await;
        let given_up = tokio::spawn({
            let hashing = hashing.clone();
            async move { hashing.run(|| ()).await }
        });
        until(&hashing, |s| s.queued == 1).await;
        assert_eq!(hashing.run(|| ()).await, Err(Busy), "the queue is full");
        given_up.abort();
        assert!(given_up.await.is_err(), "aborted");
        assert_eq!(hashing.stats().queued, 0);
        let next = tokio::spawn({
            let hashing = hashing.clone();
            async move { hashing.run(|| 7).await }
        });
        until(&hashing, |s| s.queued == 1).await;
        release.send(()).expect("the held job waits");
        assert!(held.await.expect("joined").expect("ran").is_ok());
        assert_eq!(
            next.await.expect("joined"),
            Ok(7),
            "its place went to the next job"
        );
        let stats = hashing.stats();
        assert_eq!(
            (stats.runs, stats.peak, stats.refused),
            (2, 1, 1),
            "{stats:?}"
        );
    }
}
