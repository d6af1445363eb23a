//! Which task or table a piece of state belongs to, and how its sled key says so.
//!
//! A task is one partition number of a service's input topics: the partitions of that number
//! of every input topic go to one instance together (they are co-partitioned), so the state
//! they build moves with them when the task changes owner. A global table is built from topics
//! every instance reads whole (a catalog). Each sled key starts with two bytes naming its
//! scope, so a task's state can be found, restored and cleared on its own.

/// The scope of a state key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// State of one task: built from partition `n` of the input topics, logged to partition `n`
    /// of the service's changelog.
    Task(i32),
    /// A global table (every instance holds all of it), or state no record caused.
    Global,
}

/// The prefix of [`Scope::Global`]; tasks are numbered below it.
const GLOBAL: [u8; 2] = [0xff, 0xff];

/// The highest task number a key can name.
pub const MAX_TASK: i32 = 0xfffe;

impl Scope {
    /// The two bytes a key of this scope starts with (tasks out of range share the last one;
    /// the processor refuses topics with that many partitions).
    pub(crate) fn prefix(self) -> [u8; 2] {
        match self {
            Scope::Task(n) => u16::try_from(n.clamp(0, MAX_TASK))
                .unwrap_or_default()
                .to_be_bytes(),
            Scope::Global => GLOBAL,
        }
    }

    /// The sled key of `key` in this scope.
    pub(crate) fn key(self, key: &[u8]) -> Vec<u8> {
        let mut raw = Vec::with_capacity(key.len() + 2);
        raw.extend_from_slice(&self.prefix());
        raw.extend_from_slice(key);
        raw
    }

    /// Calls `f` with the sled key of `key` in this scope, built on the stack when the key is
    /// short: a record looks keys up several times, and each lookup allocated its key.
    pub(crate) fn with_key<T>(self, key: &[u8], f: impl FnOnce(&[u8]) -> T) -> T {
        const ON_STACK: usize = 128;
        let len = key.len() + 2;
        if len > ON_STACK {
            return f(&self.key(key));
        }
        let mut raw = [0u8; ON_STACK];
        raw[..2].copy_from_slice(&self.prefix());
        raw[2..len].copy_from_slice(key);
        f(&raw[..len])
    }

    /// The scope of a prefix.
    pub(crate) fn of_prefix(prefix: [u8; 2]) -> Scope {
        if prefix == GLOBAL {
            Scope::Global
        } else {
            Scope::Task(i32::from(u16::from_be_bytes(prefix)))
        }
    }

    /// A sled key's scope and the key as the service wrote it.
    pub(crate) fn split(raw: &[u8]) -> Option<(Scope, &[u8])> {
        let (prefix, key) = raw.split_first_chunk::<2>()?;
        Some((Scope::of_prefix(*prefix), key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_keeps_its_scope_and_tasks_sort_before_global_state() {
        for scope in [
            Scope::Task(0),
            Scope::Task(5),
            Scope::Task(MAX_TASK),
            Scope::Global,
        ] {
            let raw = scope.key(b"saga/b-1");
            assert_eq!(Scope::split(&raw), Some((scope, &b"saga/b-1"[..])));
        }
        assert!(Scope::Task(1).key(b"z") < Scope::Task(2).key(b"a"));
        assert!(Scope::Task(MAX_TASK).key(b"z") < Scope::Global.key(b""));
        assert_eq!(Scope::split(b"x"), None);
    }

    #[test]
    fn a_key_built_on_the_stack_is_the_scoped_key_whatever_its_length() {
        for len in [0, 1, 126, 127, 500] {
            let key = vec![b'k'; len];
            let raw = Scope::Task(3).with_key(&key, <[u8]>::to_vec);
            assert_eq!(raw, Scope::Task(3).key(&key), "a key of {len} bytes");
        }
    }
}
