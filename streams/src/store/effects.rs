//! What records do to a store: one record's [`Effects`], and the [`Batch`] one commit writes.

use std::sync::Arc;

use super::{Changelog, FastMap, Scope};
use crate::kafka::OutgoingRecord;

/// State keys a handler read, with the values it saw (`None`: absent).
pub(crate) type Reads = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// What one record (or one request) does to the store.
#[derive(Debug, Default, Clone)]
pub struct Effects {
    pub(crate) puts: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub(crate) emits: Vec<OutgoingRecord>,
    /// Keys read and the values seen, checked again at commit: keys of the effects' own scope.
    pub(crate) reads: Reads,
    /// As `reads`, for sled keys (scope included): what a handler read from any scope.
    pub(crate) scoped_reads: Reads,
}

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

    /// Sets a business-state key. Keys starting with NUL are the runtime's own (the
    /// changelog's markers): services name theirs with text, such as `seats/<flight id>`.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.puts.push((key.into(), Some(value.into())));
    }

    /// Removes a business-state key.
    pub fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.puts.push((key.into(), None));
    }

    /// Queues a framed record for publication once the transaction commits.
    pub fn emit(&mut self, record: OutgoingRecord) {
        self.emits.push(record);
    }

    /// The records queued so far.
    pub fn emitted(&self) -> &[OutgoingRecord] {
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

/// One partition's records in a batch.
#[derive(Debug)]
pub(crate) struct Span {
    /// The state the partition's records write: their task's, or a global table.
    pub(crate) scope: Scope,
    pub(crate) group: String,
    pub(crate) topic: String,
    pub(crate) partition: i32,
    /// The batch's first record of the partition: a checked commit is refused if the store is
    /// already past it.
    pub(crate) first: i64,
    /// The offset after the batch's last record.
    pub(crate) next: i64,
}

impl Span {
    fn holds(&self, at: &Position<'_>) -> bool {
        self.partition == at.partition && self.topic == at.topic && self.group == at.group
    }
}

/// Records' effects, offsets and dedupe marks, committed in one transaction by
/// [`super::Store::commit`]: all of them or none.
///
/// Later writes to a key replace earlier ones in memory, so a hot key costs one write per
/// batch, not one per record, and the batch's event ids are stored as one chunk.
#[derive(Debug, Default)]
pub struct Batch {
    pub(crate) state: FastMap<Vec<u8>, Option<Vec<u8>>>,
    pub(crate) emits: Vec<OutgoingRecord>,
    /// A handful of partitions, searched in place so that a record costs no allocation here.
    pub(crate) spans: Vec<Span>,
    /// The span of the last record added: consecutive records mostly come from one partition
    /// (the consumer hands them out a fetched batch at a time), so it is looked at first.
    last_span: usize,
    /// Event ids of the batch's records, with the scope of each record's state, shared with the
    /// store's dedupe window once committed.
    pub(crate) ids: FastMap<Arc<[u8]>, Scope>,
    /// Keys the batch's handlers read from the store (not from the batch), with the values
    /// seen: a checked commit is refused as stale if any changed.
    pub(crate) reads: Reads,
    /// Where the commit logs its tasks' changes, if anywhere.
    pub(crate) changelog: Option<Arc<Changelog>>,
    records: usize,
}

impl Batch {
    /// A batch whose commit logs the changes of its tasks to `changelog`.
    pub fn logged(changelog: Option<Arc<Changelog>>) -> Self {
        Batch {
            changelog,
            ..Batch::default()
        }
    }

    /// Adds one record's effects on the state of `scope`, its offset and its dedupe mark
    /// (`event_id`: `None` for a record that only moves the offset, such as a duplicate or a
    /// dead letter).
    pub fn add(
        &mut self,
        at: &Position<'_>,
        scope: Scope,
        event_id: Option<&[u8]>,
        effects: Effects,
    ) {
        let next = at.offset + 1;
        match self.span_index(at) {
            Some(index) => {
                let span = &mut self.spans[index];
                span.next = span.next.max(next);
                self.last_span = index;
            }
            None => {
                self.last_span = self.spans.len();
                self.spans.push(Span {
                    scope,
                    group: at.group.to_owned(),
                    topic: at.topic.to_owned(),
                    partition: at.partition,
                    first: at.offset,
                    next,
                });
            }
        }
        if let Some(id) = event_id {
            self.ids.insert(Arc::from(id), scope);
        }
        self.add_effects(scope, effects);
        self.records += 1;
    }

    /// Adds effects on the state of `scope` that no consumed record caused (an HTTP request,
    /// say).
    pub(crate) fn add_effects(&mut self, scope: Scope, effects: Effects) {
        let own = effects.reads.into_iter().map(|(k, v)| (scope.key(&k), v));
        for (key, value) in own.chain(effects.scoped_reads) {
            if !self.reads.iter().any(|(k, _)| *k == key) {
                self.reads.push((key, value));
            }
        }
        for (key, value) in effects.puts {
            // A hot key is in the batch already: replace its value without building its
            // scoped key again.
            match scope.with_key(&key, |raw| self.state.get_mut(raw)) {
                Some(slot) => *slot = value,
                None => {
                    self.state.insert(scope.key(&key), value);
                }
            }
        }
        self.emits.extend(effects.emits);
    }

    fn span_index(&self, at: &Position<'_>) -> Option<usize> {
        match self.spans.get(self.last_span) {
            Some(last) if last.holds(at) => Some(self.last_span),
            _ => self.spans.iter().position(|s| s.holds(at)),
        }
    }

    /// The offset after the batch's last record of `at`'s partition, if it holds one.
    pub fn next_offset(&self, at: &Position<'_>) -> Option<i64> {
        self.span_index(at).map(|index| self.spans[index].next)
    }

    /// Whether an event id is among the batch's records (see also [`super::Store::seen`]).
    pub fn seen(&self, event_id: &[u8]) -> bool {
        self.ids.contains_key(event_id)
    }

    /// Empties the batch once it is committed.
    pub fn clear(&mut self) {
        self.ids.clear();
        self.state.clear();
        self.emits.clear();
        self.spans.clear();
        self.last_span = 0;
        self.reads.clear();
        self.records = 0;
    }

    /// The value a key of `scope` will have once the batch commits, if the batch touches it.
    pub fn pending(&self, scope: Scope, key: &[u8]) -> Option<Option<&[u8]>> {
        if self.state.is_empty() {
            return None;
        }
        scope.with_key(key, |raw| self.state.get(raw).map(Option::as_deref))
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
