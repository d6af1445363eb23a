//! The dedupe window: the event ids a store applied last, to skip a record delivered twice.

use std::collections::VecDeque;
use std::sync::Arc;

use super::FastMap;
use crate::parts::{put_part, take_part};

/// How many of the most recently applied event ids a store remembers to skip duplicates.
///
/// A duplicate is an event published again by a relay that crashed between publishing and
/// clearing its outbox (or re-emitted after a lost transaction, with the same derived id). It
/// has the original's key, so it lands in the same partition shortly after it: in a consumer's
/// sequence only what the producers wrote meanwhile lies between the two. Remembering the last
/// 100,000 ids covers that many times over while keeping the store and its memory bounded
/// (about 10 MB at most).
pub const DEDUPE_WINDOW: usize = 100_000;

/// The event ids a store remembers, in memory for lookups and in sled for restarts. Each
/// commit writes its records' ids as one chunk per scope its records' state is in (one sled key
/// per transaction and task, not one per record: a replay's batch of 50,000 records writes a
/// chunk per task); the oldest chunks are dropped once more than [`DEDUPE_WINDOW`] ids are
/// kept, and a task's chunks when the task's state is read back from its changelog.
///
/// In memory an id is its [`Print`] (keeping, hashing and dropping the ids themselves, an
/// allocation each, was a quarter of a replay's time); a print found is checked against the
/// ids its chunk holds in sled ([`Store::seen`](super::Store::seen)), so two ids that share a
/// print never make a record look like a duplicate.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// Print → the chunk holding it.
    ids: FastMap<Print, Chunk>,
    /// Chunks, oldest first, with their prints.
    chunks: VecDeque<(Chunk, Vec<Print>)>,
    pub(crate) next_chunk: u64,
    printer: Printer,
}

/// An event id in the window: two seeded 64-bit hashes of it. Only a lookup's first step: a
/// match is confirmed against the ids themselves, so a collision, by chance or by a producer
/// choosing ids, costs at most the dedupe of the id it displaced, never a record.
pub(crate) type Print = u128;

#[derive(Default)]
struct Printer(
    foldhash::quality::RandomState,
    foldhash::quality::RandomState,
);

impl std::fmt::Debug for Printer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the seeds.
        f.write_str("Printer")
    }
}

impl Printer {
    fn print(&self, id: &[u8]) -> Print {
        use std::hash::BuildHasher;
        (u128::from(self.0.hash_one(id)) << 64) | u128::from(self.1.hash_one(id))
    }
}

/// A chunk of marks: the commit's number, and the prefix of the scope its records' state is in
/// (`None` in a store written before marks had scopes).
pub(crate) type Chunk = (u64, Option<[u8; 2]>);

/// The sled key of a chunk: its number, then its scope's prefix.
pub(crate) fn chunk_key((number, scope): Chunk) -> Vec<u8> {
    let mut key = number.to_be_bytes().to_vec();
    key.extend(scope.iter().flatten());
    key
}

/// The inverse of [`chunk_key`]; `None` for a key it did not write.
pub(crate) fn key_chunk(key: &[u8]) -> Option<Chunk> {
    let (number, scope) = key.split_first_chunk::<8>()?;
    let scope = match scope {
        [] => None,
        [a, b] => Some([*a, *b]),
        _ => return None,
    };
    Some((u64::from_be_bytes(*number), scope))
}

impl Seen {
    pub(crate) fn add<'a>(&mut self, chunk: Chunk, ids: impl IntoIterator<Item = &'a [u8]>) {
        if self.ids.capacity() == 0 {
            // Sized once for the whole window: growing it rehashes every id.
            self.ids.reserve(DEDUPE_WINDOW + DEDUPE_WINDOW / 8);
        }
        let prints: Vec<Print> = ids.into_iter().map(|id| self.printer.print(id)).collect();
        for print in &prints {
            self.ids.insert(*print, chunk);
        }
        self.chunks.push_back((chunk, prints));
        self.next_chunk = self.next_chunk.max(chunk.0 + 1);
    }

    /// Forgets the chunks of the scope whose prefix is `scope` (and those whose scope is not
    /// known); returns the chunks to delete from sled. Its state is about to be read back
    /// from the changelog, which may stand before the commits those ids were applied in: the
    /// records will be applied again, and must not be skipped as duplicates.
    pub(crate) fn forget_scope(&mut self, scope: [u8; 2]) -> Vec<Chunk> {
        let mut forgotten = Vec::new();
        let ids = &mut self.ids;
        self.chunks.retain(|(chunk, chunk_ids)| {
            if chunk.1.is_some_and(|s| s != scope) {
                return true;
            }
            for id in chunk_ids {
                if ids.get(id) == Some(chunk) {
                    ids.remove(id);
                }
            }
            forgotten.push(*chunk);
            false
        });
        forgotten
    }

    /// The chunk that may hold `id`: one holding an id with its print.
    pub(crate) fn chunk_of(&self, id: &[u8]) -> Option<Chunk> {
        self.ids.get(&self.printer.print(id)).copied()
    }

    /// Forgets the oldest chunks while the rest still hold [`DEDUPE_WINDOW`] ids; returns the
    /// chunks to delete from sled.
    pub(crate) fn forget_oldest(&mut self) -> Vec<Chunk> {
        let mut forgotten = Vec::new();
        while let Some((chunk, ids)) = self.chunks.front() {
            if self.ids.len().saturating_sub(ids.len()) < DEDUPE_WINDOW {
                break;
            }
            for id in ids {
                // An id applied again later (not possible through the runtime) stays.
                if self.ids.get(id) == Some(chunk) {
                    self.ids.remove(id);
                }
            }
            forgotten.push(*chunk);
            self.chunks.pop_front();
        }
        forgotten
    }
}

/// A chunk of event ids: each length-prefixed.
pub(crate) fn encode_ids<'a>(ids: impl IntoIterator<Item = &'a Arc<[u8]>>) -> Vec<u8> {
    let mut out = Vec::new();
    for id in ids {
        put_part(&mut out, id);
    }
    out
}

/// The inverse of [`encode_ids`]; stops at bytes it did not write.
pub(crate) fn decode_ids(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut at = 0;
    std::iter::from_fn(move || take_part(bytes, &mut at))
}
