//! A service's local state in sled, changed in one transaction per [`Batch`].
//!
//! The business state, the consumed offsets, the event-id dedupe marks and the outbox are
//! written together: after a crash either all of a batch happened or none of it.
//!
//! The business state lives in one tree whose keys a service namespaces itself (for example
//! `seats/<flight id>`), each under the [`Scope`] it belongs to: a task (one input partition
//! number) or a global table. Its [`Store::digest`] is order-independent and stable across
//! runs and machines, so a store rebuilt by replaying topics can be compared with the live one.
//! A commit of a processor with a changelog also queues its tasks' changes for the changelog
//! (see [`changelog`]), in the same transaction.

pub mod changelog;
mod dedupe;
mod effects;
mod scope;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use sled::Transactional as _;
use sled::transaction::{ConflictableTransactionError, TransactionError};

pub use changelog::Changelog;
pub use dedupe::DEDUPE_WINDOW;
use dedupe::{Chunk, Seen, chunk_key, decode_ids, encode_ids, key_chunk};
pub(crate) use effects::Reads;
pub use effects::{Batch, Effects, Position};
pub use scope::{MAX_TASK, Scope};

use crate::error::{Error, Result};
use crate::kafka::OutgoingRecord;
use crate::outbox::{self, Outbox};

/// What [`Store::commit`] did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Its effects, offsets, dedupe marks and outbox entries were written.
    Applied,
    /// Nothing was written: another worker sharing the store already applied one of its
    /// offsets or event ids.
    AlreadyApplied,
    /// Nothing was written: a key a handler read changed before the commit (another worker
    /// sharing the store wrote it). Run the handlers again on fresh state.
    Stale,
}

/// Who else may write a store while a batch is built, which decides what its commit checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writers {
    /// Other workers may (a live processor): the commit is refused if any of the batch's
    /// offsets or event ids was applied meanwhile, or a key its handlers read changed.
    Shared,
    /// Nobody else does (a replay into its own store, whose shares write disjoint tasks, a
    /// global table one share alone): nothing is checked, and handlers' reads are not recorded.
    Sole,
}

/// A service's sled store. Cloning shares it.
#[derive(Clone, Debug)]
pub struct Store {
    db: sled::Db,
    state: sled::Tree,
    offsets: sled::Tree,
    /// Applied event ids in chunks: chunk number (big-endian u64) → the ids (see [`Seen`]).
    marks: sled::Tree,
    outbox: Outbox,
    seen: Arc<Mutex<Seen>>,
    /// The scopes that hold state, so that a read by key alone looks in each.
    scopes: Arc<Mutex<BTreeSet<[u8; 2]>>>,
}

/// The offsets group under which changelog checkpoints are kept: NUL cannot start a group.
const CHECKPOINTS: &str = "\u{0}changelog";

/// The hasher of the maps a record touches: several lookups per record on keys that are event
/// ids and state keys. foldhash is several times faster than std's SipHash on such short keys
/// and is still seeded per process.
type FastHash = foldhash::fast::RandomState;
type FastMap<K, V> = HashMap<K, V, FastHash>;

/// Event ids, shared between a batch and the dedupe window.
type Ids = Vec<Arc<[u8]>>;

fn store_error(e: impl std::fmt::Display) -> Error {
    Error::Store(e.to_string())
}

impl Store {
    /// Opens (or creates) the store in a directory.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when sled cannot open it (for example another process holds it).
    pub fn open(path: &Path) -> Result<Store> {
        let in_path = |e: &dyn std::fmt::Display| Error::Store(format!("{}: {e}", path.display()));
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(Some(200))
            .open()
            .map_err(|e| in_path(&e))?;
        Self::from_db(db).map_err(|e| in_path(&e))
    }

    /// A store that lives in memory only (tests, replays compared and thrown away).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when sled cannot create it.
    pub fn temporary() -> Result<Store> {
        let db = sled::Config::new()
            .temporary(true)
            .flush_every_ms(None)
            .open()
            .map_err(store_error)?;
        Self::from_db(db)
    }

    /// A temporary store whose business state holds `entries` (tests and tools that read a
    /// store they did not build from the log).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when sled cannot create or write it.
    pub fn temporary_with<K, V>(entries: impl IntoIterator<Item = (K, V)>) -> Result<Store>
    where
        K: Into<Vec<u8>>,
        V: Into<Vec<u8>>,
    {
        let store = Store::temporary()?;
        let mut effects = Effects::default();
        for (key, value) in entries {
            effects.put(key, value);
        }
        store.commit_local(effects)?;
        Ok(store)
    }

    fn from_db(db: sled::Db) -> Result<Store> {
        let tree = |name: &str| db.open_tree(name).map_err(store_error);
        let marks = tree("marks")?;
        let mut seen = Seen::default();
        for entry in marks.iter() {
            let (key, value) = entry.map_err(store_error)?;
            if let Some(chunk) = key_chunk(&key) {
                seen.add(chunk, decode_ids(&value));
            }
        }
        for chunk in seen.forget_oldest() {
            marks.remove(chunk_key(chunk)).map_err(store_error)?;
        }
        let state = tree("state")?;
        // Each scope's first key, skipping the rest of the scope: one seek per scope.
        let mut scopes = BTreeSet::new();
        let mut from = [0u8; 2];
        while let Some((key, _)) = state
            .range(from..)
            .next()
            .transpose()
            .map_err(store_error)?
        {
            let Some(prefix) = key.first_chunk::<2>() else {
                break;
            };
            scopes.insert(*prefix);
            match u16::from_be_bytes(*prefix).checked_add(1) {
                Some(next) => from = next.to_be_bytes(),
                None => break,
            }
        }
        Ok(Store {
            state,
            offsets: tree("offsets")?,
            marks,
            outbox: Outbox::new(db.clone(), tree("outbox")?),
            db,
            seen: Arc::new(Mutex::new(seen)),
            scopes: Arc::new(Mutex::new(scopes)),
        })
    }

    fn scopes(&self) -> Vec<Scope> {
        crate::sync::lock(&self.scopes)
            .iter()
            .map(|prefix| Scope::of_prefix(*prefix))
            .collect()
    }

    /// The store's outbox, for its relay.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Reads a business-state key, in whichever scope holds it (a key lives in one).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on an I/O failure.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        for scope in self.scopes() {
            if let Some(value) = self.get_in(scope, key)? {
                return Ok(Some(value));
            }
        }
        Ok(None)
    }

    /// Reads a business-state key of one scope.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on an I/O failure.
    pub fn get_in(&self, scope: Scope, key: &[u8]) -> Result<Option<Vec<u8>>> {
        scope
            .with_key(key, |raw| self.state.get(raw))
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(store_error)
    }

    /// Every business-state entry under a key prefix, over every scope, in key order.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on an I/O failure.
    pub fn scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut found = Vec::new();
        for scope in self.scopes() {
            found.extend(self.scan_in(scope, prefix)?);
        }
        found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(found)
    }

    /// Every business-state entry of one scope under a key prefix, in key order.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on an I/O failure.
    pub fn scan_in(&self, scope: Scope, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.state
            .scan_prefix(scope.key(prefix))
            .map(|r| {
                r.map(|(k, v)| (k[2..].to_vec(), v.to_vec()))
                    .map_err(store_error)
            })
            .collect()
    }

    /// How many business-state entries are under a key prefix, over every scope (nothing is
    /// copied out).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on an I/O failure.
    pub fn count(&self, prefix: &[u8]) -> Result<usize> {
        let mut count = 0;
        for scope in self.scopes() {
            for entry in self.state.scan_prefix(scope.key(prefix)).keys() {
                entry.map_err(store_error)?;
                count += 1;
            }
        }
        Ok(count)
    }

    /// Removes every business-state key of `scope` (a task about to be restored).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on an I/O failure.
    pub fn clear(&self, scope: Scope) -> Result<()> {
        let mut batch = sled::Batch::default();
        for key in self.state.scan_prefix(scope.prefix()).keys() {
            batch.remove(key.map_err(store_error)?);
        }
        self.state.apply_batch(batch).map_err(store_error)
    }

    /// Writes restored state of `scope` (`None`: remove the key), without a transaction or a
    /// batch: the caller restores a task nobody processes yet and writes its offsets last, and
    /// several tasks restore at once (a sled batch holds a lock that lets one write at a time).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on an I/O failure.
    pub(crate) fn restore(
        &self,
        scope: Scope,
        entries: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<()> {
        crate::sync::lock(&self.scopes).insert(scope.prefix());
        for (key, value) in entries {
            match value {
                Some(value) => self.state.insert(scope.key(&key), value).map(drop),
                None => self.state.remove(scope.key(&key)).map(drop),
            }
            .map_err(store_error)?;
        }
        Ok(())
    }

    /// Sets the next offsets of `group`'s partitions, as (topic, partition, next); `None`
    /// forgets one.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on an I/O failure.
    pub(crate) fn set_offsets<'t>(
        &self,
        group: &str,
        offsets: impl IntoIterator<Item = (&'t str, i32, Option<i64>)>,
    ) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (topic, partition, next) in offsets {
            let key = offset_key(group, topic, partition);
            match next {
                Some(next) => batch.insert(key.as_bytes(), &next.to_be_bytes()),
                None => batch.remove(key.as_bytes()),
            }
        }
        self.offsets.apply_batch(batch).map_err(store_error)
    }

    /// The changelog offset up to which this store's state of a task is known to equal the
    /// changelog (a marker this store wrote was acked there, or a restore read that far).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on an I/O failure.
    pub fn checkpoint(&self, changelog: &str, task: i32) -> Result<Option<i64>> {
        self.next_offset(CHECKPOINTS, changelog, task)
    }

    /// Records (or with `None` forgets) a task's [`Store::checkpoint`].
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on an I/O failure.
    pub(crate) fn set_checkpoint(
        &self,
        changelog: &str,
        task: i32,
        offset: Option<i64>,
    ) -> Result<()> {
        // One key, written alone: a write is atomic by itself, and a sled batch would pin the
        // log (two buffer rolls, each waking every idle thread of sled's IO pool) once per
        // acked commit.
        let key = offset_key(CHECKPOINTS, changelog, task);
        match offset {
            Some(next) => self.offsets.insert(key, &next.to_be_bytes()).map(drop),
            None => self.offsets.remove(key).map(drop),
        }
        .map_err(store_error)
    }

    /// The next offset to consume for a partition, as last committed with a record.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on an I/O failure.
    pub fn next_offset(&self, group: &str, topic: &str, partition: i32) -> Result<Option<i64>> {
        let key = offset_key(group, topic, partition);
        Ok(self
            .offsets
            .get(key)
            .map_err(|e| Error::Store(e.to_string()))?
            .and_then(|v| v.as_ref().try_into().ok().map(i64::from_be_bytes)))
    }

    /// Every stored offset of a group: (topic, partition, next offset).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on an I/O failure.
    pub fn offsets(&self, group: &str) -> Result<Vec<(String, i32, i64)>> {
        let prefix = format!("{group}\u{0}");
        let mut found = Vec::new();
        for entry in self.offsets.scan_prefix(prefix.as_bytes()) {
            let (key, value) = entry.map_err(|e| Error::Store(e.to_string()))?;
            let key = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            let Some((topic, partition)) = key.rsplit_once('\u{0}') else {
                continue;
            };
            let (Ok(partition), Ok(bytes)) =
                (partition.parse(), <[u8; 8]>::try_from(value.as_ref()))
            else {
                continue;
            };
            found.push((topic.to_owned(), partition, i64::from_be_bytes(bytes)));
        }
        Ok(found)
    }

    /// Whether an event id is among the last [`DEDUPE_WINDOW`] applied (a lookup in memory;
    /// a match is confirmed in sled).
    pub fn seen(&self, event_id: &[u8]) -> bool {
        self.applied(&crate::sync::lock(&self.seen), event_id)
    }

    /// Whether `seen` holds `id`: its print, then the id itself among its chunk's ids in sled
    /// (read only on a match, which outside a duplicate is as rare as two ids sharing a print).
    fn applied(&self, seen: &Seen, id: &[u8]) -> bool {
        let Some(chunk) = seen.chunk_of(id) else {
            return false;
        };
        match self.marks.get(chunk_key(chunk)) {
            Ok(Some(ids)) => decode_ids(&ids).any(|stored| stored == id),
            Ok(None) => false,
            Err(error) => {
                // Skipping it is what the window said before it could be checked.
                tracing::warn!(%error, "Reading an event id's dedupe chunk failed; taking the id as applied");
                true
            }
        }
    }

    /// Forgets the event ids applied to `scope`'s state: its state is about to be read back from
    /// its changelog, which may stand before the commits they were applied in, and their
    /// records, applied again, must not be skipped as duplicates. (This loses the dedupe of
    /// those ids, as a store restored empty never had it.)
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when sled cannot delete them.
    pub(crate) fn forget_marks(&self, scope: Scope) -> Result<()> {
        let mut seen = crate::sync::lock(&self.seen);
        let forgotten = seen.forget_scope(scope.prefix());
        let mut batch = sled::Batch::default();
        for chunk in forgotten {
            batch.remove(chunk_key(chunk));
        }
        self.marks.apply_batch(batch).map_err(store_error)
    }

    /// Applies a batch in one transaction: its records' effects, offsets and dedupe marks and
    /// the records they emit. After a crash either all of it happened or none did.
    ///
    /// With [`Writers::Shared`] the transaction first checks what the batch relied on: that no
    /// worker applied one of its offsets or event ids yet (a partition handed over mid-batch),
    /// and that every key its handlers read still holds what they saw. If not, nothing is
    /// written and [`Committed`] says why.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the transaction cannot be written.
    pub fn commit(&self, batch: &Batch, writers: Writers) -> Result<Committed> {
        let checked = writers == Writers::Shared;
        let logged = self.changelog_records(batch)?;
        let outbox_ids = self.outbox.ids(batch.emits.len() + logged.len())?;
        // With other workers, held through the transaction: two of them cannot both pass the
        // duplicate check with one event id. A store's sole writer (a replay, whose shares
        // each commit their own tasks) checks nothing, so the window is locked only to number
        // the chunk and, after the transaction, to add it: a share reading the window per
        // record is not held up by another's commit.
        let mut seen = crate::sync::lock(&self.seen);
        if checked && batch.ids.keys().any(|id| self.applied(&seen, id)) {
            return Ok(Committed::AlreadyApplied);
        }
        // Reserved now, so a refused or empty commit leaves a gap in the numbers: nothing
        // needs them contiguous, only ordered.
        let number = seen.next_chunk;
        seen.next_chunk += 1;
        let held = if checked {
            Some(seen)
        } else {
            drop(seen);
            None
        };
        let spans: Vec<(String, i64, i64)> = batch
            .spans
            .iter()
            .map(|s| (offset_key(&s.group, &s.topic, s.partition), s.first, s.next))
            .collect();
        let mut by_scope: BTreeMap<[u8; 2], Ids> = BTreeMap::new();
        for (id, scope) in &batch.ids {
            by_scope.entry(scope.prefix()).or_default().push(id.clone());
        }
        // Each chunk with its stored form and its ids.
        let marks: Vec<(Chunk, Vec<u8>, Ids)> = by_scope
            .into_iter()
            .map(|(scope, ids)| ((number, Some(scope)), encode_ids(&ids), ids))
            .collect();
        let result: std::result::Result<(), TransactionError<Committed>> =
            (&self.state, &self.offsets, &self.marks, self.outbox.tree()).transaction(
                |(state, offsets, marks_tree, outbox_tree)| {
                    if checked {
                        for (key, first, _) in &spans {
                            let applied = offsets
                                .get(key.as_bytes())?
                                .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                                .is_some_and(|next| *first < i64::from_be_bytes(next));
                            if applied {
                                return Err(ConflictableTransactionError::Abort(
                                    Committed::AlreadyApplied,
                                ));
                            }
                        }
                        for (key, expected) in &batch.reads {
                            if state.get(key.as_slice())?.as_deref() != expected.as_deref() {
                                return Err(ConflictableTransactionError::Abort(Committed::Stale));
                            }
                        }
                    }
                    for (key, value) in &batch.state {
                        match value {
                            Some(value) => state.insert(key.as_slice(), value.as_slice())?,
                            None => state.remove(key.as_slice())?,
                        };
                    }
                    for (key, _, next) in &spans {
                        offsets.insert(key.as_bytes(), &next.to_be_bytes())?;
                    }
                    for (chunk, encoded, _) in &marks {
                        marks_tree.insert(chunk_key(*chunk), encoded.as_slice())?;
                    }
                    for (id, entry) in outbox_ids.iter().zip(batch.emits.iter().chain(&logged)) {
                        outbox_tree.insert(&id.to_be_bytes(), outbox::encode(entry))?;
                    }
                    Ok(())
                },
            );
        match result {
            Ok(()) => {}
            Err(TransactionError::Abort(refused)) => return Ok(refused),
            Err(TransactionError::Storage(e)) => return Err(store_error(e)),
        }
        let mut seen = held.unwrap_or_else(|| crate::sync::lock(&self.seen));
        if !marks.is_empty() {
            for (chunk, _, ids) in marks {
                seen.add(chunk, ids.iter().map(|id| &**id));
            }
            // Outside the transaction: a crash before these deletes only leaves older marks
            // to be forgotten at the next start.
            for old in seen.forget_oldest() {
                self.marks.remove(chunk_key(old)).map_err(store_error)?;
            }
        }
        drop(seen);
        if !batch.state.is_empty() {
            let mut scopes = crate::sync::lock(&self.scopes);
            for key in batch.state.keys() {
                if let Some(prefix) = key.first_chunk::<2>() {
                    scopes.insert(*prefix);
                }
            }
        }
        if !outbox_ids.is_empty() {
            self.outbox.notify();
        }
        Ok(Committed::Applied)
    }

    /// The changelog records of a batch: per task it touched, its changed keys and a marker
    /// with the task's input offsets after the batch.
    fn changelog_records(&self, batch: &Batch) -> Result<Vec<OutgoingRecord>> {
        let Some(log) = &batch.changelog else {
            return Ok(Vec::new());
        };
        let mut tasks: BTreeMap<i32, Vec<OutgoingRecord>> = Default::default();
        for (raw, value) in &batch.state {
            if let Some((Scope::Task(task), key)) = Scope::split(raw) {
                tasks
                    .entry(task)
                    .or_default()
                    .push(log.change(task, key, value.as_deref()));
            }
        }
        for span in &batch.spans {
            if let Scope::Task(task) = span.scope {
                tasks.entry(task).or_default();
            }
        }
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        // Only this processor moves its tasks' offsets, so reading them outside the
        // transaction sees what the transaction starts from.
        let stored = self.offsets(&log.group)?;
        let mut records = Vec::new();
        for (task, changes) in tasks {
            let mut reached: changelog::Marker = stored
                .iter()
                .filter(|(topic, partition, _)| *partition == task && log.inputs.contains(topic))
                .map(|(topic, _, next)| (topic.clone(), *next))
                .collect();
            for span in &batch.spans {
                if span.scope == Scope::Task(task) && span.group == log.group {
                    reached.insert(span.topic.clone(), span.next);
                }
            }
            records.extend(changes);
            records.push(log.marker(task, &reached));
        }
        Ok(records)
    }

    /// Applies effects that no consumed record caused (an HTTP request, say): state changes and
    /// emitted records in one transaction, with no offset and no dedupe mark. Keys named with
    /// [`Effects::expect`] are checked as in [`Store::commit`].
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the transaction cannot be written.
    pub fn commit_local(&self, effects: Effects) -> Result<Committed> {
        let mut batch = Batch::default();
        batch.add_effects(Scope::Global, effects);
        self.commit(&batch, Writers::Shared)
    }

    /// An order-independent digest of the business state: the wrapping sum of a 128-bit
    /// FNV-1a hash of each entry, printed as hex with the entry count.
    pub fn digest(&self) -> Result<String> {
        let mut sum: u128 = 0;
        let mut count = 0u64;
        for item in self.state.iter() {
            let (key, value) = item.map_err(|e| Error::Store(e.to_string()))?;
            sum = sum.wrapping_add(fnv1a(&key, &value));
            count += 1;
        }
        Ok(format!("{count}:{sum:032x}"))
    }

    /// Writes everything to disk now.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on an I/O failure.
    pub fn flush(&self) -> Result<()> {
        self.db
            .flush()
            .map(drop)
            .map_err(|e| Error::Store(e.to_string()))
    }
}

fn offset_key(group: &str, topic: &str, partition: i32) -> String {
    // NUL separates the parts: it cannot occur in group or topic names.
    format!("{group}\u{0}{topic}\u{0}{partition}")
}

fn fnv1a(key: &[u8], value: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let mut hash = OFFSET;
    let len = (key.len() as u64).to_be_bytes();
    for byte in len.iter().chain(key).chain(value) {
        hash ^= u128::from(*byte);
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commits one record as a live processor does (every record's effects on task 0's state,
    /// whatever partition it came from, so that workers meet on the same keys).
    fn commit_one(
        store: &Store,
        at: &Position<'_>,
        event_id: Option<&[u8]>,
        effects: &Effects,
    ) -> Result<Committed> {
        let mut batch = Batch::default();
        batch.add(at, Scope::Task(0), event_id, effects.clone());
        store.commit(&batch, Writers::Shared)
    }

    /// A record for `topic` with nothing in it.
    fn bare_entry(topic: &str) -> OutgoingRecord {
        OutgoingRecord {
            topic: topic.into(),
            partition: None,
            key: vec![],
            payload: Some(vec![]),
            headers: vec![],
        }
    }

    #[test]
    fn a_commit_applies_state_offset_dedupe_and_outbox_together() {
        let store = Store::temporary().expect("store");
        let mut effects = Effects::default();
        effects.put(b"seats/LH1".to_vec(), b"3".to_vec());
        effects.emit(bare_entry("out"));
        let at = Position {
            group: "g",
            topic: "t",
            partition: 2,
            offset: 41,
        };
        commit_one(&store, &at, Some(b"e1"), &effects).expect("commit");
        assert_eq!(store.get(b"seats/LH1").expect("get"), Some(b"3".to_vec()));
        assert_eq!(store.count(b"seats/").expect("count"), 1);
        assert_eq!(store.count(b"rooms/").expect("count"), 0);
        assert_eq!(store.next_offset("g", "t", 2).expect("offset"), Some(42));
        assert_eq!(
            store.offsets("g").expect("offsets"),
            vec![("t".to_owned(), 2, 42)]
        );
        assert!(store.seen(b"e1"));
        assert_eq!(store.outbox().oldest(10).expect("outbox").len(), 1);
        assert_eq!(store.outbox().len(), 1);
    }

    #[test]
    fn published_outbox_entries_are_cleared_in_any_order_and_the_rest_stay_in_order() {
        let store = Store::temporary().expect("store");
        let mut effects = Effects::default();
        for topic in ["a", "b", "c", "d"] {
            effects.emit(bare_entry(topic));
        }
        let at = Position {
            group: "g",
            topic: "t",
            partition: 0,
            offset: 0,
        };
        commit_one(&store, &at, None, &effects).expect("commit");
        let ids: Vec<u64> = store
            .outbox()
            .oldest(10)
            .expect("outbox")
            .iter()
            .map(|(id, _)| *id)
            .collect();
        // Acks come back in any order.
        store.outbox().clear(&[ids[2], ids[0]]).expect("cleared");
        store.outbox().clear(&[]).expect("nothing to clear");
        let left: Vec<String> = store
            .outbox()
            .oldest(10)
            .expect("outbox")
            .into_iter()
            .map(|(_, entry)| entry.topic)
            .collect();
        assert_eq!(left, ["b", "d"]);
        assert_eq!(store.outbox().len(), 2);
    }

    #[test]
    fn offsets_are_listed_per_group() {
        let store = Store::temporary().expect("store");
        for (group, topic, partition, offset) in
            [("g", "t", 0, 5), ("g2", "t", 0, 9), ("g", "u", 3, 0)]
        {
            let at = Position {
                group,
                topic,
                partition,
                offset,
            };
            commit_one(&store, &at, None, &Effects::default()).expect("commit");
        }
        assert_eq!(store.count(b"").expect("count"), 0, "offsets are not state");
        let mut of_g = store.offsets("g").expect("offsets");
        of_g.sort();
        assert_eq!(of_g, vec![("t".into(), 0, 6), ("u".into(), 3, 1)]);
        // A group whose name starts like another's is not mixed in.
        assert_eq!(
            store.offsets("g2").expect("offsets"),
            vec![("t".into(), 0, 10)]
        );
    }

    #[test]
    fn a_commit_refuses_what_another_worker_sharing_the_store_already_did() {
        let store = Store::temporary().expect("store");
        let at = |partition, offset| Position {
            group: "g",
            topic: "t",
            partition,
            offset,
        };
        let mut first = Effects::default();
        first.put(b"n".to_vec(), b"1".to_vec());
        assert_eq!(
            commit_one(&store, &at(0, 0), Some(b"e0"), &first).expect("commit"),
            Committed::Applied
        );

        // A second worker read `n` before the first wrote it: its write would lose an update.
        let mut stale = Effects::default();
        stale.expect(b"n".to_vec(), None);
        stale.put(b"n".to_vec(), b"1".to_vec());
        assert_eq!(
            commit_one(&store, &at(1, 0), None, &stale).expect("commit"),
            Committed::Stale
        );
        // Run again on what is there now, it applies.
        let mut fresh = Effects::default();
        fresh.expect(b"n".to_vec(), Some(b"1".to_vec()));
        fresh.put(b"n".to_vec(), b"2".to_vec());
        assert_eq!(
            commit_one(&store, &at(1, 0), None, &fresh).expect("commit"),
            Committed::Applied
        );
        assert_eq!(store.get(b"n").expect("get"), Some(b"2".to_vec()));

        // The same offset, or the same event id from elsewhere, is applied once.
        let mut again = Effects::default();
        again.put(b"n".to_vec(), b"9".to_vec());
        assert_eq!(
            commit_one(&store, &at(0, 0), None, &again).expect("commit"),
            Committed::AlreadyApplied
        );
        assert_eq!(
            commit_one(&store, &at(2, 0), Some(b"e0"), &again).expect("commit"),
            Committed::AlreadyApplied
        );
        assert_eq!(store.get(b"n").expect("get"), Some(b"2".to_vec()));
        assert_eq!(store.next_offset("g", "t", 2).expect("offset"), None);
    }

    #[test]
    fn a_batch_keeps_the_last_write_and_its_ids_survive_a_restart_as_one_chunk() {
        let at = |offset| Position {
            group: "g",
            topic: "t",
            partition: 0,
            offset,
        };
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("store");
        let mut batch = Batch::default();
        for (offset, value) in [(0, b"1"), (1, b"2")] {
            let mut effects = Effects::default();
            effects.put(b"n".to_vec(), value.to_vec());
            batch.add(
                &at(offset),
                Scope::Task(0),
                Some(format!("e{offset}").as_bytes()),
                effects,
            );
        }
        assert_eq!(batch.pending(Scope::Task(0), b"n"), Some(Some(&b"2"[..])));
        assert!(batch.seen(b"e1") && !store.seen(b"e1"));
        store.commit(&batch, Writers::Sole).expect("commit");
        batch.clear();
        assert!(batch.is_empty() && !batch.seen(b"e1"));
        assert!(store.seen(b"e0") && store.seen(b"e1") && !store.seen(b"e2"));
        assert_eq!(store.get(b"n").expect("get"), Some(b"2".to_vec()));
        assert_eq!(store.next_offset("g", "t", 0).expect("offset"), Some(2));
        assert_eq!(store.marks.len(), 1, "one chunk for the batch");
        drop(store);

        let reopened = Store::open(dir.path()).expect("store");
        assert!(reopened.seen(b"e0") && reopened.seen(b"e1"));
        // A record carrying an id applied before the restart is a duplicate.
        assert_eq!(
            commit_one(&reopened, &at(2), Some(b"e1"), &Effects::default()).expect("commit"),
            Committed::AlreadyApplied
        );
    }

    #[test]
    fn a_tasks_ids_are_forgotten_on_their_own_when_its_state_is_read_back() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("store");
        let mut batch = Batch::default();
        for (task, id) in [(1, "a1"), (2, "b1"), (1, "a2")] {
            let at = Position {
                group: "g",
                topic: "t",
                partition: task,
                offset: 0,
            };
            let mut effects = Effects::default();
            effects.put(id.as_bytes().to_vec(), b"1".to_vec());
            batch.add(&at, Scope::Task(task), Some(id.as_bytes()), effects);
        }
        store.commit(&batch, Writers::Shared).expect("commit");
        assert_eq!(store.marks.len(), 2, "a chunk per task");
        // A chunk from a store written before chunks had scopes.
        store
            .marks
            .insert(99u64.to_be_bytes(), encode_ids(&[Arc::from(&b"old"[..])]))
            .expect("insert");
        drop(store);
        let store = Store::open(dir.path()).expect("store");
        assert!(store.seen(b"old") && store.seen(b"a1") && store.seen(b"b1"));

        store.forget_marks(Scope::Task(1)).expect("forgotten");
        assert!(!store.seen(b"a1") && !store.seen(b"a2") && !store.seen(b"old"));
        assert!(store.seen(b"b1"), "another task's ids stay");
        drop(store);
        let store = Store::open(dir.path()).expect("store");
        assert!(!store.seen(b"a1") && !store.seen(b"old") && store.seen(b"b1"));
        // Task 1's record, applied again, is not taken for a duplicate.
        let mut again = Batch::default();
        let at = Position {
            group: "g",
            topic: "t",
            partition: 1,
            offset: 1,
        };
        again.add(&at, Scope::Task(1), Some(b"a1"), Effects::default());
        assert_eq!(
            store.commit(&again, Writers::Shared).expect("commit"),
            Committed::Applied
        );
    }

    #[test]
    fn the_oldest_ids_are_forgotten_beyond_the_window_in_memory_and_in_sled() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("store");
        let chunk = 1_000;
        let batches = DEDUPE_WINDOW / chunk + 3;
        for b in 0..batches {
            let mut batch = Batch::default();
            for i in 0..chunk {
                let at = Position {
                    group: "g",
                    topic: "t",
                    partition: 0,
                    offset: (b * chunk + i) as i64,
                };
                batch.add(
                    &at,
                    Scope::Task(0),
                    Some(format!("e{}", b * chunk + i).as_bytes()),
                    Effects::default(),
                );
            }
            store.commit(&batch, Writers::Sole).expect("commit");
        }
        let newest = format!("e{}", batches * chunk - 1);
        assert!(store.seen(newest.as_bytes()));
        assert!(!store.seen(b"e0"), "the oldest chunk is forgotten");
        assert!(store.seen(format!("e{}", batches * chunk - DEDUPE_WINDOW).as_bytes()));
        assert_eq!(store.marks.len(), DEDUPE_WINDOW / chunk);
        drop(store);
        let reopened = Store::open(dir.path()).expect("store");
        assert!(reopened.seen(newest.as_bytes()) && !reopened.seen(b"e0"));
    }

    #[test]
    fn the_digest_depends_on_content_not_on_insertion_order() {
        let a = Store::temporary().expect("store");
        let b = Store::temporary().expect("store");
        let at = |offset| Position {
            group: "g",
            topic: "t",
            partition: 0,
            offset,
        };
        let mut one = Effects::default();
        one.put(b"x".to_vec(), b"1".to_vec());
        let mut two = Effects::default();
        two.put(b"y".to_vec(), b"2".to_vec());
        commit_one(&a, &at(0), None, &one).expect("commit");
        commit_one(&a, &at(1), None, &two).expect("commit");
        commit_one(&b, &at(0), None, &two).expect("commit");
        commit_one(&b, &at(1), None, &one).expect("commit");
        assert_eq!(a.digest().expect("digest"), b.digest().expect("digest"));
        assert!(a.digest().expect("digest").starts_with("2:"));
        let mut change = Effects::default();
        change.put(b"y".to_vec(), b"3".to_vec());
        commit_one(&b, &at(2), None, &change).expect("commit");
        assert_ne!(a.digest().expect("digest"), b.digest().expect("digest"));
    }
}
