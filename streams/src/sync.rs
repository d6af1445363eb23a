//! Lock helpers for the runtime's shared maps, which only ever hold complete entries, and its
//! one way to start a scoped thread.

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
