//! A service's local state in sled: the business state, the consumed offsets, the event-id
//! dedupe marks and the outbox, changed together in one transaction per record.
//!
//! The business state lives in one tree whose keys a service namespaces itself (for example
//! `seats/<flight id>`). Its [`Store::digest`] is order-independent and stable across runs and
//! machines, so a store rebuilt by replaying topics can be compared with the live one.

use std::collections::{HashMap, HashSet};
use std::path::Path;

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
/// batch, not one per record.
#[derive(Debug, Default)]
pub struct Batch {
    state: HashMap<Vec<u8>, Option<Vec<u8>>>,
    emits: Vec<OutboxEntry>,
    /// ((group, topic, partition), next offset): a handful of partitions, searched in place so
    /// that a record costs no allocation here.
    offsets: Vec<((String, String, i32), i64)>,
    /// Event id → where it was applied.
    marks: HashMap<Vec<u8>, String>,
    records: usize,
    /// Event ids committed by earlier batches of the same run.
    committed_ids: HashSet<Vec<u8>>,
    /// Whether `committed_ids` holds every id the store has seen: true when the store held no
    /// dedupe mark before the run began, so no store read is needed to spot a duplicate.
    knows_every_id: bool,
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
            self.marks.insert(
                id.to_vec(),
                format!("{}/{}/{}", at.topic, at.partition, at.offset),
            );
        }
        self.state.extend(effects.puts);
        self.emits.extend(effects.emits);
        self.records += 1;
    }

    /// A batch for a run of batches into `store` (a replay), which remembers the event ids of
    /// the batches it committed so that, on a store with no earlier marks, duplicates are found
    /// in memory.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on an I/O failure.
    pub fn for_run(store: &Store) -> Result<Batch> {
        let fresh = store
            .dedupe
            .first()
            .map_err(|e| Error::Store(e.to_string()))?
            .is_none();
        Ok(Batch {
            knows_every_id: fresh,
            ..Batch::default()
        })
    }

    /// Whether an event id is among this run's records. When this says no and
    /// [`Batch::knows_every_id`] is false, the store must be asked too.
    pub fn seen(&self, event_id: &[u8]) -> bool {
        self.marks.contains_key(event_id) || self.committed_ids.contains(event_id)
    }

    /// Whether [`Batch::seen`] alone answers for the whole store.
    pub fn knows_every_id(&self) -> bool {
        self.knows_every_id
    }

    /// Empties the batch after [`Store::commit_batch`], keeping what the run has seen.
    pub fn committed(&mut self) {
        if self.knows_every_id {
            self.committed_ids
                .extend(self.marks.drain().map(|(id, _)| id));
        }
        self.marks.clear();
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
    dedupe: sled::Tree,
    outbox: sled::Tree,
    outbox_signal: std::sync::Arc<tokio::sync::Notify>,
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
        let tree = |name: &str| db.open_tree(name).map_err(|e| Error::Store(e.to_string()));
        Ok(Store {
            state: tree("state")?,
            offsets: tree("offsets")?,
            dedupe: tree("dedupe")?,
            outbox: tree("outbox")?,
            db,
            outbox_signal: std::sync::Arc::default(),
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

    /// Whether an event id was already applied.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on an I/O failure.
    pub fn seen(&self, event_id: &[u8]) -> Result<bool> {
        self.dedupe
            .contains_key(event_id)
            .map_err(|e| Error::Store(e.to_string()))
    }

    /// Applies a record's effects, its offset, its dedupe mark and its emitted events in one
    /// transaction: after a crash either all of them happened or none did.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the transaction cannot be written.
    ///
    /// Several workers may share one store, so the transaction first checks what the record
    /// relied on: that no worker applied this offset or event id yet (a partition handed over
    /// mid-record), and that every key the handler read still holds what it saw
    /// ([`Effects::expect`]). If not, nothing is written and [`Committed`] says why.
    pub fn commit(
        &self,
        at: &Position<'_>,
        event_id: Option<&[u8]>,
        effects: &Effects,
    ) -> Result<Committed> {
        let offset_key = offset_key(at.group, at.topic, at.partition);
        let marker = format!("{}/{}/{}", at.topic, at.partition, at.offset);
        let outbox_ids = self.outbox_ids(effects.emits.len())?;
        let result: std::result::Result<(), TransactionError<Committed>> =
            (&self.state, &self.offsets, &self.dedupe, &self.outbox).transaction(
                |(state, offsets, dedupe, outbox)| {
                    let applied = offsets
                        .get(offset_key.as_bytes())?
                        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                        .is_some_and(|next| at.offset < i64::from_be_bytes(next));
                    let duplicate = match event_id {
                        Some(id) => dedupe.get(id)?.is_some(),
                        None => false,
                    };
                    if applied || duplicate {
                        return Err(ConflictableTransactionError::Abort(
                            Committed::AlreadyApplied,
                        ));
                    }
                    for (key, seen) in &effects.reads {
                        if state.get(key.as_slice())?.as_deref() != seen.as_deref() {
                            return Err(ConflictableTransactionError::Abort(Committed::Stale));
                        }
                    }
                    for (key, value) in &effects.puts {
                        match value {
                            Some(value) => state.insert(key.as_slice(), value.as_slice())?,
                            None => state.remove(key.as_slice())?,
                        };
                    }
                    offsets.insert(offset_key.as_bytes(), &(at.offset + 1).to_be_bytes())?;
                    if let Some(id) = event_id {
                        dedupe.insert(id, marker.as_bytes())?;
                    }
                    for (id, entry) in outbox_ids.iter().zip(&effects.emits) {
                        outbox.insert(&id.to_be_bytes(), entry.encode())?;
                    }
                    Ok(())
                },
            );
        match result {
            Ok(()) => {
                if !effects.emits.is_empty() {
                    self.outbox_signal.notify_one();
                }
                Ok(Committed::Applied)
            }
            Err(TransactionError::Abort(refused)) => Ok(refused),
            Err(TransactionError::Storage(e)) => Err(Error::Store(e.to_string())),
        }
    }

    fn outbox_ids(&self, count: usize) -> Result<Vec<u64>> {
        (0..count)
            .map(|_| self.db.generate_id())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Store(e.to_string()))
    }

    /// Applies effects that no consumed record caused (an HTTP request, say): state changes and
    /// emitted events in one transaction, with no offset and no dedupe mark.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the transaction cannot be written.
    pub fn commit_local(&self, effects: &Effects) -> Result<()> {
        let mut batch = Batch::default();
        batch.state.extend(effects.puts.iter().cloned());
        batch.emits.extend(effects.emits.iter().cloned());
        self.commit_batch(&batch)
    }

    /// Applies a batch of records in one transaction (see [`Batch`]).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the transaction cannot be written.
    pub fn commit_batch(&self, batch: &Batch) -> Result<()> {
        let outbox_ids = self.outbox_ids(batch.emits.len())?;
        let result: std::result::Result<(), TransactionError<()>> =
            (&self.state, &self.offsets, &self.dedupe, &self.outbox).transaction(
                |(state, offsets, dedupe, outbox)| {
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
                    for (id, marker) in &batch.marks {
                        dedupe.insert(id.as_slice(), marker.as_bytes())?;
                    }
                    for (id, entry) in outbox_ids.iter().zip(&batch.emits) {
                        outbox.insert(&id.to_be_bytes(), entry.encode())?;
                    }
                    Ok::<(), ConflictableTransactionError<()>>(())
                },
            );
        result.map_err(|e| Error::Store(format!("{e:?}")))?;
        if !batch.emits.is_empty() {
            self.outbox_signal.notify_one();
        }
        Ok(())
    }

    /// The oldest outbox entries, up to `max`, with their ids.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on an I/O failure or an entry this runtime did not write.
    pub fn outbox(&self, max: usize) -> Result<Vec<(u64, OutboxEntry)>> {
        let mut entries = Vec::new();
        for item in self.outbox.iter().take(max) {
            let (key, value) = item.map_err(|e| Error::Store(e.to_string()))?;
            let id = <[u8; 8]>::try_from(key.as_ref())
                .map(u64::from_be_bytes)
                .unwrap_or_default();
            let entry = OutboxEntry::decode(&value)
                .ok_or_else(|| Error::Store(format!("outbox entry {id} is corrupt")))?;
            entries.push((id, entry));
        }
        Ok(entries)
    }

    /// Removes a published outbox entry.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on an I/O failure.
    pub fn clear_outbox(&self, id: u64) -> Result<()> {
        self.outbox
            .remove(id.to_be_bytes())
            .map(drop)
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

    #[test]
    fn a_commit_applies_state_offset_dedupe_and_outbox_together() {
        let store = Store::temporary().expect("store");
        let mut effects = Effects::default();
        effects.put(b"seats/LH1".to_vec(), b"3".to_vec());
        effects.emit(OutboxEntry {
            topic: "out".into(),
            key: vec![],
            payload: vec![],
            headers: vec![],
        });
        let at = Position {
            group: "g",
            topic: "t",
            partition: 2,
            offset: 41,
        };
        store.commit(&at, Some(b"e1"), &effects).expect("commit");
        assert_eq!(store.get(b"seats/LH1").expect("get"), Some(b"3".to_vec()));
        assert_eq!(store.next_offset("g", "t", 2).expect("offset"), Some(42));
        assert_eq!(
            store.offsets("g").expect("offsets"),
            vec![("t".to_owned(), 2, 42)]
        );
        assert!(store.seen(b"e1").expect("seen"));
        assert_eq!(store.outbox(10).expect("outbox").len(), 1);
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
    fn a_run_of_batches_keeps_the_last_write_and_remembers_ids_only_on_a_fresh_store() {
        let at = |offset| Position {
            group: "g",
            topic: "t",
            partition: 0,
            offset,
        };
        let store = Store::temporary().expect("store");
        let mut batch = Batch::for_run(&store).expect("batch");
        assert!(batch.knows_every_id());
        for (offset, value) in [(0, b"1"), (1, b"2")] {
            let mut effects = Effects::default();
            effects.put(b"n".to_vec(), value.to_vec());
            batch.add(&at(offset), Some(format!("e{offset}").as_bytes()), effects);
        }
        assert_eq!(batch.pending(b"n"), Some(Some(&b"2"[..])));
        store.commit_batch(&batch).expect("commit");
        batch.committed();
        assert!(batch.is_empty());
        assert!(batch.seen(b"e0") && batch.seen(b"e1") && !batch.seen(b"e2"));
        assert_eq!(store.get(b"n").expect("get"), Some(b"2".to_vec()));
        assert_eq!(store.next_offset("g", "t", 0).expect("offset"), Some(2));
        assert!(store.seen(b"e1").expect("seen"));

        // A store with earlier marks: the store must be asked.
        let resumed = Batch::for_run(&store).expect("batch");
        assert!(!resumed.knows_every_id());
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
