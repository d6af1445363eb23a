//! A service's local state in sled: the business state, the consumed offsets, the event-id
//! dedupe marks and the outbox, changed together in one transaction per record.
//!
//! The business state lives in one tree whose keys a service namespaces itself (for example
//! `seats/<flight id>`). Its [`Store::digest`] is order-independent and stable across runs and
//! machines, so a store rebuilt by replaying topics can be compared with the live one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use sled::Transactional as _;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::error::{Error, Result};

/// An event waiting in the outbox to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Destination topic.
    pub topic: String,
    /// Record key.
    pub key: Vec<u8>,
    /// Record value (already framed in the Confluent wire format).
    pub payload: Vec<u8>,
    /// Record headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl OutboxEntry {
    /// A compact binary form: each part length-prefixed.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() + self.key.len() + 64);
        put(&mut out, self.topic.as_bytes());
        put(&mut out, &self.key);
        put(&mut out, &self.payload);
        out.extend_from_slice(&(self.headers.len() as u32).to_be_bytes());
        for (name, value) in &self.headers {
            put(&mut out, name.as_bytes());
            put(&mut out, value);
        }
        out
    }

    /// The inverse of [`OutboxEntry::encode`]; `None` for bytes it did not write.
    pub fn decode(bytes: &[u8]) -> Option<OutboxEntry> {
        let mut at = 0;
        let topic = String::from_utf8(take(bytes, &mut at)?.to_vec()).ok()?;
        let key = take(bytes, &mut at)?.to_vec();
        let payload = take(bytes, &mut at)?.to_vec();
        let count = u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        let mut headers = Vec::new();
        for _ in 0..count {
            let name = String::from_utf8(take(bytes, &mut at)?.to_vec()).ok()?;
            let value = take(bytes, &mut at)?.to_vec();
            headers.push((name, value));
        }
        (at == bytes.len()).then_some(OutboxEntry {
            topic,
            key,
            payload,
            headers,
        })
    }
}

fn put(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&(part.len() as u32).to_be_bytes());
    out.extend_from_slice(part);
}

fn take<'a>(bytes: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let len = u32::from_be_bytes(bytes.get(*at..*at + 4)?.try_into().ok()?) as usize;
    let part = bytes.get(*at + 4..*at + 4 + len)?;
    *at += 4 + len;
    Some(part)
}

/// What one record does to the store, applied atomically by [`Store::commit`].
#[derive(Debug, Default, Clone)]
pub struct Effects {
    pub(crate) puts: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub(crate) emits: Vec<OutboxEntry>,
    /// Keys read and the values seen, checked again at commit.
    pub(crate) reads: Reads,
}

/// State keys a handler read, with the values it saw (`None`: absent).
pub(crate) type Reads = Vec<(Vec<u8>, Option<Vec<u8>>)>;

impl Effects {
    /// Makes the commit conditional on `key` still holding `value` (`None`: absent). A
    /// read-modify-write is exact only if what it read is unchanged when it writes: with
    /// several workers on one store, another may have written the key in between.
    pub fn expect(&mut self, key: impl Into<Vec<u8>>, value: Option<Vec<u8>>) {
        let key = key.into();
        if !self.reads.iter().any(|(k, _)| *k == key) {
            self.reads.push((key, value));
        }
    }

    /// Sets a business-state key.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.puts.push((key.into(), Some(value.into())));
    }

    /// Removes a business-state key.
    pub fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.puts.push((key.into(), None));
    }

    /// Queues a framed event for publication once the record's transaction commits.
    pub fn emit(&mut self, entry: OutboxEntry) {
        self.emits.push(entry);
    }

    /// The events queued so far.
    pub fn emitted(&self) -> &[OutboxEntry] {
        &self.emits
    }

    /// The value a key will have after these effects, if they touch it.
    pub fn pending(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        self.puts
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_deref())
    }
}

/// Several records' effects, committed in one transaction by [`Store::commit_batch`]: the
/// same all-or-nothing guarantee per batch instead of per record, for rebuilding a store fast.
/// Later writes to a key replace earlier ones in memory, so a hot key costs one write per
/// batch, not one per record, and the batch's event ids are stored as one chunk.
#[derive(Debug, Default)]
pub struct Batch {
    state: FastMap<Vec<u8>, Option<Vec<u8>>>,
    emits: Vec<OutboxEntry>,
    /// ((group, topic, partition), next offset): a handful of partitions, searched in place so
    /// that a record costs no allocation here.
    offsets: Vec<((String, String, i32), i64)>,
    /// Event ids of the batch's records.
    ids: HashSet<Vec<u8>, FastHash>,
    records: usize,
}

impl Batch {
    /// Adds one record's effects, offset and dedupe mark.
    pub fn add(&mut self, at: &Position<'_>, event_id: Option<&[u8]>, effects: Effects) {
        let next = at.offset + 1;
        match self.offsets.iter_mut().find(|((g, t, p), _)| {
            *p == at.partition && t.as_str() == at.topic && g.as_str() == at.group
        }) {
            Some((_, stored)) => *stored = next,
            None => self.offsets.push((
                (at.group.to_owned(), at.topic.to_owned(), at.partition),
                next,
            )),
        }
        if let Some(id) = event_id {
            self.ids.insert(id.to_vec());
        }
        self.state.extend(effects.puts);
        self.emits.extend(effects.emits);
        self.records += 1;
    }

    /// Whether an event id is among the batch's records (see also [`Store::seen`]).
    pub fn seen(&self, event_id: &[u8]) -> bool {
        self.ids.contains(event_id)
    }

    /// Empties the batch after [`Store::commit_batch`].
    pub fn committed(&mut self) {
        self.ids.clear();
        self.state.clear();
        self.emits.clear();
        self.offsets.clear();
        self.records = 0;
    }

    /// The value a key will have once the batch commits, if the batch touches it.
    pub fn pending(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        self.state.get(key).map(Option::as_deref)
    }

    /// How many records the batch holds.
    pub fn len(&self) -> usize {
        self.records
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }
}

/// What [`Store::commit`] did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Its effects, offset, dedupe mark and outbox entries were written.
    Applied,
    /// Nothing was written: another worker sharing the store already applied this offset or
    /// this event id.
    AlreadyApplied,
    /// Nothing was written: a key the handler read changed before the commit (another worker
    /// sharing the store wrote it). Run the handler again on fresh state.
    Stale,
}

/// What a checked commit verifies before writing.
struct Checks<'a> {
    /// The first record of each partition in the commit: refused if its partition is already
    /// past it.
    firsts: &'a [Position<'a>],
    /// Keys and the values the handler saw: refused as stale if any changed.
    reads: &'a Reads,
}

/// Where a consumed record came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position<'a> {
    /// Consumer group (or replay name).
    pub group: &'a str,
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// The record's offset.
    pub offset: i64,
}

/// A service's sled store. Cloning shares it.
#[derive(Clone, Debug)]
pub struct Store {
    db: sled::Db,
    state: sled::Tree,
    offsets: sled::Tree,
    /// Applied event ids in chunks: chunk number (big-endian u64) → the ids (see [`Seen`]).
    marks: sled::Tree,
    outbox: sled::Tree,
    seen: Arc<Mutex<Seen>>,
    outbox_signal: Arc<tokio::sync::Notify>,
}

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
/// commit writes its records' ids as one chunk (one sled key per transaction, not one per
/// record: a replay's batch of 5,000 records writes one chunk); the oldest chunks are dropped
/// once more than [`DEDUPE_WINDOW`] ids are kept.
#[derive(Debug, Default)]
struct Seen {
    /// Id → the chunk holding it.
    ids: FastMap<Arc<[u8]>, u64>,
    /// Chunks, oldest first, with their ids.
    chunks: VecDeque<(u64, Vec<Arc<[u8]>>)>,
    next_chunk: u64,
}

impl Seen {
    fn add(&mut self, chunk: u64, ids: impl IntoIterator<Item = Vec<u8>>) {
        if self.ids.capacity() == 0 {
            // Sized once for the whole window: growing it rehashes every id.
            self.ids.reserve(DEDUPE_WINDOW + DEDUPE_WINDOW / 8);
        }
        let ids: Vec<Arc<[u8]>> = ids.into_iter().map(Arc::from).collect();
        for id in &ids {
            self.ids.insert(id.clone(), chunk);
        }
        self.chunks.push_back((chunk, ids));
        self.next_chunk = self.next_chunk.max(chunk + 1);
    }

    /// Forgets the oldest chunks while the rest still hold [`DEDUPE_WINDOW`] ids; returns the
    /// chunks to delete from sled.
    fn forget_oldest(&mut self) -> Vec<u64> {
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

/// The hasher of the maps a record touches: several lookups per record on keys that are event
/// ids and state keys. foldhash is several times faster than std's SipHash on such short keys
/// and is still seeded per process.
type FastHash = foldhash::fast::RandomState;
type FastMap<K, V> = HashMap<K, V, FastHash>;

/// A chunk of event ids: each length-prefixed.
fn encode_ids<'a>(ids: impl IntoIterator<Item = &'a Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for id in ids {
        put(&mut out, id);
    }
    out
}

/// The inverse of [`encode_ids`]; stops at bytes it did not write.
fn decode_ids(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut at = 0;
    let mut ids = Vec::new();
    while let Some(id) = take(bytes, &mut at) {
        ids.push(id.to_vec());
    }
    ids
}

fn sled_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Store(format!("{}: {e}", path.display()))
}

impl Store {
    /// Opens (or creates) the store in a directory.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when sled cannot open it (for example another process holds it).
    pub fn open(path: &Path) -> Result<Store> {
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(Some(200))
            .open()
            .map_err(|e| sled_error(path, e))?;
        Self::from_db(db).map_err(|e| Error::Store(format!("{}: {e}", path.display())))
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
            .map_err(|e| Error::Store(e.to_string()))?;
        Self::from_db(db)
    }

    fn from_db(db: sled::Db) -> Result<Store> {
        let store_error = |e: sled::Error| Error::Store(e.to_string());
        let tree = |name: &str| db.open_tree(name).map_err(store_error);
        let marks = tree("marks")?;
        // Stores written before chunked marks kept one key per event id in `dedupe`: carried
        // over as one chunk.
        if db.tree_names().iter().any(|n| n.as_ref() == b"dedupe") {
            let legacy = tree("dedupe")?;
            let ids: Vec<Vec<u8>> = legacy
                .iter()
                .keys()
                .map(|k| k.map(|k| k.to_vec()))
                .collect::<std::result::Result<_, _>>()
                .map_err(store_error)?;
            if !ids.is_empty() {
                let chunk = marks.last().map_err(store_error)?.map_or(0, |(k, _)| {
                    <[u8; 8]>::try_from(k.as_ref()).map_or(0, |b| u64::from_be_bytes(b) + 1)
                });
                marks
                    .insert(chunk.to_be_bytes(), encode_ids(&ids))
                    .map_err(store_error)?;
            }
            db.drop_tree("dedupe").map_err(store_error)?;
        }
        let mut seen = Seen::default();
        for entry in marks.iter() {
            let (key, value) = entry.map_err(store_error)?;
            if let Ok(chunk) = <[u8; 8]>::try_from(key.as_ref()) {
                seen.add(u64::from_be_bytes(chunk), decode_ids(&value));
            }
        }
        for chunk in seen.forget_oldest() {
            marks.remove(chunk.to_be_bytes()).map_err(store_error)?;
        }
        Ok(Store {
            state: tree("state")?,
            offsets: tree("offsets")?,
            marks,
            outbox: tree("outbox")?,
            db,
            seen: Arc::new(Mutex::new(seen)),
            outbox_signal: Arc::default(),
        })
    }

    /// Reads a business-state key.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on an I/O failure.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.state
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| Error::Store(e.to_string()))
    }

    /// Every business-state entry under a key prefix, in key order.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on an I/O failure.
    pub fn scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.state
            .scan_prefix(prefix)
            .map(|r| {
                r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(|e| Error::Store(e.to_string()))
            })
            .collect()
    }

    /// How many business-state entries are under a key prefix (nothing is copied out).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on an I/O failure.
    pub fn count(&self, prefix: &[u8]) -> Result<usize> {
        let mut count = 0;
        for entry in self.state.scan_prefix(prefix).keys() {
            entry.map_err(|e| Error::Store(e.to_string()))?;
            count += 1;
        }
        Ok(count)
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

    /// Whether an event id is among the last [`DEDUPE_WINDOW`] applied (a lookup in memory).
    pub fn seen(&self, event_id: &[u8]) -> bool {
        crate::sync::lock(&self.seen).ids.contains_key(event_id)
    }

    /// Applies a record's effects, its offset, its dedupe mark and its emitted events in one
    /// transaction: after a crash either all of them happened or none did.
    ///
    /// Several workers may share one store, so the transaction first checks what the record
    /// relied on: that no worker applied this offset or event id yet (a partition handed over
    /// mid-record), and that every key the handler read still holds what it saw
    /// ([`Effects::expect`]). If not, nothing is written and [`Committed`] says why.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the transaction cannot be written.
    pub fn commit(
        &self,
        at: &Position<'_>,
        event_id: Option<&[u8]>,
        effects: &Effects,
    ) -> Result<Committed> {
        let mut batch = Batch::default();
        batch.add(at, event_id, effects.clone());
        let checks = Checks {
            firsts: std::slice::from_ref(at),
            reads: &effects.reads,
        };
        self.write(&batch, Some(&checks))
    }

    /// Applies effects that no consumed record caused (an HTTP request, say): state changes and
    /// emitted events in one transaction, with no offset and no dedupe mark. Keys named with
    /// [`Effects::expect`] are checked as in [`Store::commit`].
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the transaction cannot be written.
    pub fn commit_local(&self, effects: &Effects) -> Result<Committed> {
        let mut batch = Batch::default();
        batch.state.extend(effects.puts.iter().cloned());
        batch.emits.extend(effects.emits.iter().cloned());
        let checks = Checks {
            firsts: &[],
            reads: &effects.reads,
        };
        self.write(&batch, Some(&checks))
    }

    /// Applies a batch of records in one transaction (see [`Batch`]), unchecked: for a writer
    /// that has the store to itself (a replay).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the transaction cannot be written.
    pub fn commit_batch(&self, batch: &Batch) -> Result<()> {
        self.write(batch, None).map(drop)
    }

    /// Applies several records in one transaction, checked as in [`Store::commit`]: `firsts`
    /// holds the first record of each partition in `batch`, `reads` every key the handlers
    /// read from the store (not from the batch) with the value seen. For a live processor
    /// that found several records waiting: one transaction instead of one per record.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the transaction cannot be written.
    pub(crate) fn commit_checked(
        &self,
        batch: &Batch,
        firsts: &[Position<'_>],
        reads: &Reads,
    ) -> Result<Committed> {
        self.write(batch, Some(&Checks { firsts, reads }))
    }

    fn write(&self, batch: &Batch, checks: Option<&Checks<'_>>) -> Result<Committed> {
        let store_error = |e: sled::Error| Error::Store(e.to_string());
        let outbox_ids = self.outbox_ids(batch.emits.len())?;
        let firsts: Vec<(String, i64)> = checks
            .map(|c| c.firsts)
            .unwrap_or_default()
            .iter()
            .map(|at| (offset_key(at.group, at.topic, at.partition), at.offset))
            .collect();
        // Held through the transaction: two workers cannot both pass the duplicate check with
        // one event id, and chunks are numbered in commit order.
        let mut seen = crate::sync::lock(&self.seen);
        if checks.is_some()
            && batch
                .ids
                .iter()
                .any(|id| seen.ids.contains_key(id.as_slice()))
        {
            return Ok(Committed::AlreadyApplied);
        }
        let chunk = seen.next_chunk;
        let marks = (!batch.ids.is_empty()).then(|| encode_ids(&batch.ids));
        let result: std::result::Result<(), TransactionError<Committed>> =
            (&self.state, &self.offsets, &self.marks, &self.outbox).transaction(
                |(state, offsets, marks_tree, outbox)| {
                    for (key, offset) in &firsts {
                        let applied = offsets
                            .get(key.as_bytes())?
                            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                            .is_some_and(|next| *offset < i64::from_be_bytes(next));
                        if applied {
                            return Err(ConflictableTransactionError::Abort(
                                Committed::AlreadyApplied,
                            ));
                        }
                    }
                    for (key, expected) in checks.map_or(&[][..], |c| c.reads.as_slice()) {
                        if state.get(key.as_slice())?.as_deref() != expected.as_deref() {
                            return Err(ConflictableTransactionError::Abort(Committed::Stale));
                        }
                    }
                    for (key, value) in &batch.state {
                        match value {
                            Some(value) => state.insert(key.as_slice(), value.as_slice())?,
                            None => state.remove(key.as_slice())?,
                        };
                    }
                    for ((group, topic, partition), next) in &batch.offsets {
                        let key = offset_key(group, topic, *partition);
                        offsets.insert(key.as_bytes(), &next.to_be_bytes())?;
                    }
                    if let Some(ids) = &marks {
                        marks_tree.insert(&chunk.to_be_bytes(), ids.as_slice())?;
                    }
                    for (id, entry) in outbox_ids.iter().zip(&batch.emits) {
                        outbox.insert(&id.to_be_bytes(), entry.encode())?;
                    }
                    Ok(())
                },
            );
        match result {
            Ok(()) => {}
            Err(TransactionError::Abort(refused)) => return Ok(refused),
            Err(TransactionError::Storage(e)) => return Err(store_error(e)),
        }
        if marks.is_some() {
            seen.add(chunk, batch.ids.iter().cloned());
            // Outside the transaction: a crash before these deletes only leaves older marks
            // to be forgotten at the next start.
            for old in seen.forget_oldest() {
                self.marks.remove(old.to_be_bytes()).map_err(store_error)?;
            }
        }
        drop(seen);
        if !batch.emits.is_empty() {
            self.outbox_signal.notify_one();
        }
        Ok(Committed::Applied)
    }

    fn outbox_ids(&self, count: usize) -> Result<Vec<u64>> {
        (0..count)
            .map(|_| self.db.generate_id())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Store(e.to_string()))
    }

    /// The oldest outbox entries, up to `max`, with their ids.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on an I/O failure or an entry this runtime did not write.
    pub fn outbox(&self, max: usize) -> Result<Vec<(u64, OutboxEntry)>> {
        self.outbox_unsent(max, 0, &HashSet::new())
    }

    /// How many entries the outbox holds (nothing is decoded).
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// The oldest outbox entries from id `from` on whose ids are not in `sent`, up to `max`,
    /// with their ids.
    ///
    /// # Errors
    ///
    /// As [`Store::outbox`].
    pub fn outbox_unsent(
        &self,
        max: usize,
        from: u64,
        sent: &HashSet<u64>,
    ) -> Result<Vec<(u64, OutboxEntry)>> {
        let mut entries = Vec::new();
        for item in self.outbox.range(from.to_be_bytes()..) {
            if entries.len() >= max {
                break;
            }
            let (key, value) = item.map_err(|e| Error::Store(e.to_string()))?;
            let id = <[u8; 8]>::try_from(key.as_ref())
                .map(u64::from_be_bytes)
                .unwrap_or_default();
            if sent.contains(&id) {
                continue;
            }
            let entry = OutboxEntry::decode(&value)
                .ok_or_else(|| Error::Store(format!("outbox entry {id} is corrupt")))?;
            entries.push((id, entry));
        }
        Ok(entries)
    }

    /// Removes published outbox entries, all in one write.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on an I/O failure (then none is removed).
    pub fn clear_outbox_all(&self, ids: &[u64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for id in ids {
            batch.remove(&id.to_be_bytes());
        }
        self.outbox
            .apply_batch(batch)
            .map_err(|e| Error::Store(e.to_string()))
    }

    /// Resolves when an outbox entry may have been added since the last call.
    pub async fn outbox_changed(&self) {
        self.outbox_signal.notified().await;
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

    #[test]
    fn outbox_entries_survive_their_binary_form_and_garbage_is_refused() {
        let entry = OutboxEntry {
            topic: "t".into(),
            key: b"k".to_vec(),
            payload: vec![0, 0, 0, 0, 1, 42],
            headers: vec![("event_id".into(), b"e1".to_vec())],
        };
        assert_eq!(OutboxEntry::decode(&entry.encode()), Some(entry.clone()));
        let bytes = entry.encode();
        for cut in 0..bytes.len() {
            assert_eq!(OutboxEntry::decode(&bytes[..cut]), None);
        }
    }

    /// An outbox entry for `topic` with nothing in it.
    fn bare_entry(topic: &str) -> OutboxEntry {
        OutboxEntry {
            topic: topic.into(),
            key: vec![],
            payload: vec![],
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
        store.commit(&at, Some(b"e1"), &effects).expect("commit");
        assert_eq!(store.get(b"seats/LH1").expect("get"), Some(b"3".to_vec()));
        assert_eq!(store.count(b"seats/").expect("count"), 1);
        assert_eq!(store.count(b"rooms/").expect("count"), 0);
        assert_eq!(store.next_offset("g", "t", 2).expect("offset"), Some(42));
        assert_eq!(
            store.offsets("g").expect("offsets"),
            vec![("t".to_owned(), 2, 42)]
        );
        assert!(store.seen(b"e1"));
        assert_eq!(store.outbox(10).expect("outbox").len(), 1);
        assert_eq!(store.outbox_len(), 1);
    }

    #[test]
    fn published_outbox_entries_are_cleared_together_and_the_rest_stay_in_order() {
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
        store.commit(&at, None, &effects).expect("commit");
        let ids: Vec<u64> = store
            .outbox(10)
            .expect("outbox")
            .iter()
            .map(|(id, _)| *id)
            .collect();
        store.clear_outbox_all(&ids[..2]).expect("cleared");
        store.clear_outbox_all(&[]).expect("nothing to clear");
        let left: Vec<String> = store
            .outbox(10)
            .expect("outbox")
            .into_iter()
            .map(|(_, entry)| entry.topic)
            .collect();
        assert_eq!(left, ["c", "d"]);
        assert_eq!(store.outbox_len(), 2);
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
            store
                .commit(&at, None, &Effects::default())
                .expect("commit");
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
            store
                .commit(&at(0, 0), Some(b"e0"), &first)
                .expect("commit"),
            Committed::Applied
        );

        // A second worker read `n` before the first wrote it: its write would lose an update.
        let mut stale = Effects::default();
        stale.expect(b"n".to_vec(), None);
        stale.put(b"n".to_vec(), b"1".to_vec());
        assert_eq!(
            store.commit(&at(1, 0), None, &stale).expect("commit"),
            Committed::Stale
        );
        // Run again on what is there now, it applies.
        let mut fresh = Effects::default();
        fresh.expect(b"n".to_vec(), Some(b"1".to_vec()));
        fresh.put(b"n".to_vec(), b"2".to_vec());
        assert_eq!(
            store.commit(&at(1, 0), None, &fresh).expect("commit"),
            Committed::Applied
        );
        assert_eq!(store.get(b"n").expect("get"), Some(b"2".to_vec()));

        // The same offset, or the same event id from elsewhere, is applied once.
        let mut again = Effects::default();
        again.put(b"n".to_vec(), b"9".to_vec());
        assert_eq!(
            store.commit(&at(0, 0), None, &again).expect("commit"),
            Committed::AlreadyApplied
        );
        assert_eq!(
            store
                .commit(&at(2, 0), Some(b"e0"), &again)
                .expect("commit"),
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
            batch.add(&at(offset), Some(format!("e{offset}").as_bytes()), effects);
        }
        assert_eq!(batch.pending(b"n"), Some(Some(&b"2"[..])));
        assert!(batch.seen(b"e1") && !store.seen(b"e1"));
        store.commit_batch(&batch).expect("commit");
        batch.committed();
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
            reopened
                .commit(&at(2), Some(b"e1"), &Effects::default())
                .expect("commit"),
            Committed::AlreadyApplied
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
                    Some(format!("e{}", b * chunk + i).as_bytes()),
                    Effects::default(),
                );
            }
            store.commit_batch(&batch).expect("commit");
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
    fn marks_of_a_store_written_before_chunks_are_carried_over() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let db = sled::open(dir.path()).expect("db");
            let legacy = db.open_tree("dedupe").expect("tree");
            legacy.insert(b"old-1", &b"t/0/0"[..]).expect("insert");
            legacy.insert(b"old-2", &b"t/0/1"[..]).expect("insert");
            db.flush().expect("flush");
        }
        let store = Store::open(dir.path()).expect("store");
        assert!(store.seen(b"old-1") && store.seen(b"old-2"));
        assert!(
            !store
                .db
                .tree_names()
                .iter()
                .any(|n| n.as_ref() == b"dedupe")
        );
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
        a.commit(&at(0), None, &one).expect("commit");
        a.commit(&at(1), None, &two).expect("commit");
        b.commit(&at(0), None, &two).expect("commit");
        b.commit(&at(1), None, &one).expect("commit");
        assert_eq!(a.digest().expect("digest"), b.digest().expect("digest"));
        assert!(a.digest().expect("digest").starts_with("2:"));
        let mut change = Effects::default();
        change.put(b"y".to_vec(), b"3".to_vec());
        b.commit(&at(2), None, &change).expect("commit");
        assert_ne!(a.digest().expect("digest"), b.digest().expect("digest"));
    }
}
