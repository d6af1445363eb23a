//! Lock helpers for the runtime's shared maps, which only ever hold complete entries, and its
//! one way to start and join scoped threads.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Reads a cache. A poisoned lock only means a panic elsewhere while inserting a complete
/// value; the map itself is still consistent, so the guard is used as it is.
pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Writes a cache (see [`read`] on poisoning).
pub(crate) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// Locks a shared map (see [`read`] on poisoning).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The cores this process may run on: restores and replays read on a thread per core.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Starts `f` on a thread of `scope` named `name`, for `purpose` (said in the error). Unlike
/// `Scope::spawn`, which panics when the operating system refuses a thread, this returns the
/// refusal: restores run inside librdkafka's rebalance callback, where a panic aborts.
pub(crate) fn spawn_scoped<'scope, T: Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    name: String,
    purpose: &'static str,
    f: impl FnOnce() -> T + Send + 'scope,
) -> crate::Result<std::thread::ScopedJoinHandle<'scope, T>> {
    std::thread::Builder::new()
        .name(name)
        .spawn_scoped(scope, f)
        .map_err(|source| crate::Error::Thread { purpose, source })
}

/// Runs `work` for each of `items` on a thread of its own, named `{purpose}-{i}`: the threads
/// started, and the refusal if the operating system would not start them all (those started
/// still run to their end).
pub(crate) fn spawn_each<'scope, I, T, F>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    purpose: &'static str,
    items: impl IntoIterator<Item = I>,
    work: F,
) -> (
    Vec<std::thread::ScopedJoinHandle<'scope, T>>,
    Option<crate::Error>,
)
where
    I: Send + 'scope,
    T: Send + 'scope,
    F: Fn(I) -> T + Clone + Send + 'scope,
{
    let mut started = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let work = work.clone();
        match spawn_scoped(scope, format!("{purpose}-{i}"), purpose, move || work(item)) {
            Ok(thread) => started.push(thread),
            Err(refused) => return (started, Some(refused)),
        }
    }
    (started, None)
}

/// What a scoped thread returned; its panic goes on in the caller.
pub(crate) fn join<T>(thread: std::thread::ScopedJoinHandle<'_, T>) -> T {
    thread
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
