//! The outbox: records committed for publication, and the one relay that publishes them.
//!
//! Delivery guarantee: **at-least-once, in commit order per partition.** An entry is written in
//! the same sled transaction as the state change that emitted it (see [`crate::store`]), sent
//! by [`relay`], and cleared only after the broker acked it. A crash between the ack and the
//! clear publishes the entry again with the same headers, so its event id lets consumers skip
//! it.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;

use crate::error::{Error, Result};
use crate::kafka::{Delivery, OutgoingRecord, Producer};
use crate::parts::{put_part, take_part};
use crate::store::Store;
use crate::store::changelog::MARKER;

/// The outbox tree of one store. Cloning shares it.
#[derive(Clone, Debug)]
pub struct Outbox {
    /// The store's database: entry ids come from its id generator, in commit order.
    db: sled::Db,
    tree: sled::Tree,
    signal: Arc<tokio::sync::Notify>,
}

impl Outbox {
    pub(crate) fn new(db: sled::Db, tree: sled::Tree) -> Self {
        Outbox {
            db,
            tree,
            signal: Arc::default(),
        }
    }

    /// The tree, for the store's transactions.
    pub(crate) fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// Ids for `count` new entries, increasing in the order they are drawn.
    pub(crate) fn ids(&self, count: usize) -> Result<Vec<u64>> {
        (0..count)
            .map(|_| self.db.generate_id())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Store(e.to_string()))
    }

    /// Wakes a relay waiting in [`Outbox::changed`].
    pub(crate) fn notify(&self) {
        self.signal.notify_one();
    }

    /// The oldest entries, up to `max`, with their ids.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on an I/O failure or an entry this runtime did not write.
    pub fn oldest(&self, max: usize) -> Result<Vec<(u64, OutgoingRecord)>> {
        self.unsent(max, 0, &HashSet::new())
    }

    /// How many entries the outbox holds (nothing is decoded).
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// Whether the outbox holds no entry.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// The oldest entries from id `from` on whose ids are not in `sent`, up to `max`, with
    /// their ids.
    ///
    /// # Errors
    ///
    /// As [`Outbox::oldest`].
    pub fn unsent(
        &self,
        max: usize,
        from: u64,
        sent: &HashSet<u64>,
    ) -> Result<Vec<(u64, OutgoingRecord)>> {
        let mut entries = Vec::new();
        for item in self.tree.range(from.to_be_bytes()..) {
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
            let entry = decode(&value)
                .ok_or_else(|| Error::Store(format!("outbox entry {id} is corrupt")))?;
            entries.push((id, entry));
        }
        Ok(entries)
    }

    /// Removes published entries, oldest first.
    ///
    /// One write each, not a sled batch: the relay clears a few acks at a time, many times a
    /// second, and each batch pins sled's log (two buffer rolls, each waking every idle thread
    /// of sled's IO pool: a quarter of `bench saga`'s CPU went to such wake-ups). Atomicity
    /// buys nothing here: sled recovers a prefix of its log, so after a crash the entries left
    /// are the newest of those being cleared, sent again in order and skipped by their event
    /// ids, as entries of a batch not yet cleared would be.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on an I/O failure (then the entries older than the failed one are
    /// removed, the others not).
    pub fn clear(&self, ids: &[u64]) -> Result<()> {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        for id in ids {
            self.tree
                .remove(id.to_be_bytes())
                .map_err(|e| Error::Store(e.to_string()))?;
        }
        Ok(())
    }

    /// Resolves when an entry may have been added since the last call.
    pub async fn changed(&self) {
        self.signal.notified().await;
    }

    /// Queues records that no state change in a transaction goes with (a restore's repair).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on an I/O failure (then none is queued).
    pub(crate) fn queue(&self, records: &[OutgoingRecord]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (id, record) in self.ids(records.len())?.into_iter().zip(records) {
            batch.insert(&id.to_be_bytes(), encode(record));
        }
        self.tree
            .apply_batch(batch)
            .map_err(|e| Error::Store(e.to_string()))?;
        self.notify();
        Ok(())
    }

    /// Removes every entry for `topic`'s `partition` that is not sent yet; true if there was
    /// one. Entries for a task another instance has written since are stale: the task is
    /// restored from what that instance wrote.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] on an I/O failure or a corrupt entry.
    pub(crate) fn purge(&self, topic: &str, partition: i32) -> Result<bool> {
        let mut batch = sled::Batch::default();
        let mut found = false;
        for item in &self.tree {
            let (key, value) = item.map_err(|e| Error::Store(e.to_string()))?;
            let entry = decode(&value)
                .ok_or_else(|| Error::Store("an outbox entry is corrupt".to_owned()))?;
            if entry.topic == topic && entry.partition == Some(partition) {
                batch.remove(key);
                found = true;
            }
        }
        self.tree
            .apply_batch(batch)
            .map_err(|e| Error::Store(e.to_string()))?;
        Ok(found)
    }
}

/// Which changelog partitions a [`relay`] may publish to: those of the tasks its processor
/// owns. Entries for a task given up wait (it may come back before anyone else wrote) until the
/// processor either gets the task back or purges them (see [`Outbox::purge`]). Cloning
/// shares it.
#[derive(Clone, Debug)]
pub struct Gate {
    /// The changelog topic.
    pub(crate) topic: String,
    owned: Arc<Mutex<BTreeSet<i32>>>,
    /// Bumped whenever `owned` changes, so a relay looks at entries it held back again.
    generation: Arc<AtomicU64>,
    /// Where a relay records how far the changelog holds what this store wrote.
    store: Store,
    /// Held while a task's local state is rewritten from its changelog (a restore, a standby
    /// catch-up) and while a relay records a checkpoint: a late delivery report of a task
    /// given up must not mark a copy rebuilt meanwhile as holding that commit.
    rewriting: Arc<Mutex<()>>,
}

impl Gate {
    /// A gate for `topic` that owns nothing yet.
    pub(crate) fn new(topic: &str, store: Store) -> Self {
        Gate {
            topic: topic.to_owned(),
            owned: Arc::default(),
            generation: Arc::default(),
            store,
            rewriting: Arc::default(),
        }
    }

    /// Excludes the rewriting of any task's local state from its changelog, and checkpoints,
    /// while the guard lives.
    pub(crate) fn rewriting(&self) -> std::sync::MutexGuard<'_, ()> {
        crate::sync::lock(&self.rewriting)
    }

    /// [`Gate::rewriting`] if nothing holds it now: the relay, on a tokio worker, records a
    /// checkpoint only then, since a rebalance's restore holds the lock for seconds.
    pub(crate) fn try_rewriting(&self) -> Option<std::sync::MutexGuard<'_, ()>> {
        match self.rewriting.try_lock() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Lets entries of `task` through (after it was restored).
    pub(crate) fn own(&self, task: i32) {
        crate::sync::lock(&self.owned).insert(task);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Holds entries of `task` back (it was revoked).
    pub(crate) fn release(&self, task: i32) {
        crate::sync::lock(&self.owned).remove(&task);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether `task` is owned now.
    fn owns(&self, task: i32) -> bool {
        crate::sync::lock(&self.owned).contains(&task)
    }

    /// The task of `entry` if it is for the changelog, and whether it is a marker.
    fn task_of(&self, entry: &OutgoingRecord) -> Option<(i32, bool)> {
        if entry.topic != self.topic {
            return None;
        }
        entry.partition.map(|task| (task, entry.key == MARKER))
    }
}

/// An entry's stored form: each part length-prefixed.
pub(crate) fn encode(record: &OutgoingRecord) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(record.payload.as_ref().map_or(0, Vec::len) + record.key.len() + 64);
    put_part(&mut out, record.topic.as_bytes());
    put_part(&mut out, &record.key);
    put_part(&mut out, record.payload.as_deref().unwrap_or_default());
    out.extend_from_slice(&(record.headers.len() as u32).to_be_bytes());
    for (name, value) in &record.headers {
        put_part(&mut out, name.as_bytes());
        put_part(&mut out, value);
    }
    // An optional trailer, so that entries written before it existed still read: flags (bit
    // 0: a tombstone, bit 1: a partition follows), then the partition.
    if record.payload.is_none() || record.partition.is_some() {
        let flags =
            u8::from(record.payload.is_none()) | (u8::from(record.partition.is_some()) << 1);
        out.push(flags);
        out.extend_from_slice(&record.partition.unwrap_or_default().to_be_bytes());
    }
    out
}

/// The inverse of [`encode`]; `None` for bytes it did not write.
pub(crate) fn decode(bytes: &[u8]) -> Option<OutgoingRecord> {
    let mut at = 0;
    let topic = String::from_utf8(take_part(bytes, &mut at)?.to_vec()).ok()?;
    let key = take_part(bytes, &mut at)?.to_vec();
    let payload = take_part(bytes, &mut at)?.to_vec();
    let count = u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?);
    at += 4;
    let mut headers = Vec::new();
    for _ in 0..count {
        let name = String::from_utf8(take_part(bytes, &mut at)?.to_vec()).ok()?;
        let value = take_part(bytes, &mut at)?.to_vec();
        headers.push((name, value));
    }
    let (payload, partition) = match bytes.get(at..)? {
        [] => (Some(payload), None),
        [flags, p0, p1, p2, p3] if *flags <= 3 => {
            let partition = (flags & 2 != 0).then(|| i32::from_be_bytes([*p0, *p1, *p2, *p3]));
            ((flags & 1 == 0).then_some(payload), partition)
        }
        _ => return None,
    };
    Some(OutgoingRecord {
        topic,
        partition,
        key,
        payload,
        headers,
    })
}

/// Entries a relay keeps in flight (sent, not yet acked) or queued behind a marker at most.
const RELAY_WINDOW: usize = 512;

/// Publishes `outbox` until `stopped` turns true and the outbox is empty (whatever is left when
/// the caller gives up waiting stays for the next start). Processors run one beside their
/// consumer; services that emit events outside a processor (from HTTP requests, say) run one
/// beside their server.
///
/// Entries are sent as soon as they are committed, without waiting for earlier ones to be
/// acked (librdkafka keeps each partition's order), and cleared in send order as acks come
/// back. A failed send clears nothing after it: the relay waits for what is in flight, backs
/// off, and republishes from the oldest entry left, so nothing is skipped (a republished entry
/// keeps its event id, and consumers skip it).
///
/// With a [`Gate`], changelog entries of tasks the processor does not own wait, each acked
/// marker moves the task's checkpoint (see [`Store::checkpoint`]), and a marker is sent only
/// once every event committed before it is acked (see [`Behind`]).
pub async fn relay(
    outbox: Outbox,
    producer: Producer,
    gate: Option<Gate>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    use futures::StreamExt as _;
    let mut in_flight = futures::stream::FuturesOrdered::new();
    // Entries read from the outbox and not yet acked: in flight, held back by the gate, or
    // queued behind a marker. All are skipped when the outbox is read again.
    let mut sent = HashSet::new();
    let mut held = HashSet::new();
    // Entries in flight that are not for the changelog: the markers after them wait.
    let mut unacked = BTreeSet::new();
    let mut behind = Behind::default();
    let mut generation = u64::MAX;
    // New entries are looked for after the newest one sent; from the start again whenever
    // nothing is in flight or the periodic tick fires, for an entry whose id was taken before
    // a concurrent writer's but committed after it (workers sharing a store).
    let mut from = 0;
    let mut failed = false;
    let mut stopping = *stopped.borrow();
    loop {
        if let Some(gate) = &gate {
            let now = gate.generation.load(Ordering::SeqCst);
            if now != generation {
                // What the gate owns changed: entries held back or queued are looked at again
                // (a task given up holds its queue back, a task gained lets its held through).
                generation = now;
                let queued = behind.take_all();
                sent.retain(|id| !held.contains(id) && !queued.contains(id));
                held.clear();
                from = 0;
            }
        }
        let mut ready = Vec::new();
        if !failed && in_flight.len() + behind.len() < RELAY_WINDOW {
            if in_flight.is_empty() {
                from = 0;
            }
            match outbox.unsent(RELAY_WINDOW - in_flight.len() - behind.len(), from, &sent) {
                Ok(entries) => {
                    for (id, entry) in entries {
                        sent.insert(id);
                        from = from.max(id + 1);
                        match gate.as_ref().and_then(|g| g.task_of(&entry)) {
                            Some((task, _)) if !gate.as_ref().is_some_and(|g| g.owns(task)) => {
                                held.insert(id);
                            }
                            Some((task, marker)) => behind.push(task, id, marker, entry),
                            None => ready.push((id, None, entry)),
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "Reading the outbox failed; retrying");
                    failed = true;
                }
            }
        }
        for (id, marker, entry) in ready {
            unacked.insert(id);
            in_flight.push_back(publish(producer.clone(), id, marker, entry));
        }
        if !failed {
            let released = behind.release(&unacked);
            for (id, marker, entry) in released.send {
                in_flight.push_back(publish(producer.clone(), id, marker, entry));
            }
            if !released.dropped.is_empty() {
                match outbox.clear(&released.dropped) {
                    Ok(()) => released.dropped.iter().for_each(|id| {
                        sent.remove(id);
                    }),
                    Err(error) => {
                        // Left in the outbox and in `sent`: sent again after the failure.
                        tracing::warn!(%error, "Clearing superseded changelog markers failed");
                        failed = true;
                    }
                }
            }
        }
        if in_flight.is_empty() {
            if failed && stopping {
                // The broker is not taking entries while the service stops: they stay in the
                // outbox for the next start rather than holding the shutdown.
                return;
            }
            if failed {
                // Everything after the failure is sent again, from the oldest entry left.
                tokio::time::sleep(Duration::from_millis(200)).await;
                failed = false;
                sent.clear();
                held.clear();
                behind.take_all();
                continue;
            }
            // Entries held back for a task given up stay for whoever gets the task next.
            if stopping && outbox.len() <= held.len() {
                return;
            }
        }
        tokio::select! {
            Some(first) = in_flight.next() => {
                // The acks already in are cleared together, oldest first (see `Outbox::clear`).
                let mut acked = Vec::new();
                let mut next = Some(first);
                while let Some((id, marker, result)) = next {
                    unacked.remove(&id);
                    match result {
                        Ok(delivery) if !failed => {
                            acked.push(id);
                            if let (Some(gate), Some(task)) = (&gate, marker) {
                                // Only for a task still owned: once given up, a standby copy
                                // may have rebuilt it from the changelog without this commit.
                                // Skipped while a restore rewrites: a checkpoint left behind
                                // only makes a later restore read more of the changelog.
                                let at = Some(delivery.offset + 1);
                                if let Some(_rewriting) = gate.try_rewriting()
                                    && gate.owns(task)
                                    && let Err(error) = gate.store.set_checkpoint(&gate.topic, task, at)
                                {
                                    tracing::warn!(%error, task, "Recording a changelog checkpoint failed");
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!(%error, "Publishing the outbox failed; retrying");
                            failed = true;
                        }
                    }
                    next = in_flight.next().now_or_never().flatten();
                }
                for id in &acked {
                    sent.remove(id);
                }
                if let Err(error) = outbox.clear(&acked) {
                    tracing::warn!(%error, "Clearing published outbox entries failed");
                    failed = true;
                }
            }
            // A dropped sender counts as a stop.
            changed = stopped.changed(), if !stopping => {
                stopping = changed.is_err() || *stopped.borrow();
            }
            () = outbox.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(100)) => from = 0,
        }
    }
}

/// An entry ready to send: its id, the task whose commit it closes if it is a marker, itself.
type Ready = (u64, Option<i32>, OutgoingRecord);

/// Changelog entries waiting for what was committed before them.
///
/// A marker tells whoever restores the task that the commit before it is whole, and its input
/// offsets are where processing resumes. Sent beside the commit's events, a marker could be
/// written while an event is not (the process killed between the two acks): the task would be
/// restored as having emitted an event that no one will ever read, and a saga waiting for it
/// would wait for ever. So a task's changelog entries queue, in order, and go out up to the
/// last marker every event drawn before which (its commit's among them) is acked; of the
/// markers among them only that last one is sent (it covers their keys; the others are dropped
/// from the outbox): a busy task publishes a marker per round trip, not per commit, and a
/// commit's keys and its marker go out together.
#[derive(Default)]
struct Behind {
    tasks: std::collections::BTreeMap<i32, std::collections::VecDeque<(u64, bool, OutgoingRecord)>>,
    len: usize,
}

/// What [`Behind::release`] lets go.
#[derive(Default)]
struct Released {
    send: Vec<Ready>,
    /// Markers superseded by a later one of their task: cleared, never sent.
    dropped: Vec<u64>,
}

impl Behind {
    /// Queues changelog entry `id` of `task` (a marker if `marker`).
    fn push(&mut self, task: i32, id: u64, marker: bool, entry: OutgoingRecord) {
        self.tasks
            .entry(task)
            .or_default()
            .push_back((id, marker, entry));
        self.len += 1;
    }

    /// Entries queued.
    fn len(&self) -> usize {
        self.len
    }

    /// Empties the queues: the ids they held.
    fn take_all(&mut self) -> HashSet<u64> {
        self.len = 0;
        std::mem::take(&mut self.tasks)
            .into_values()
            .flatten()
            .map(|(id, _, _)| id)
            .collect()
    }

    /// What may go now that of the entries that are not for the changelog only `unacked` are
    /// unacked: of each task, its entries up to its last marker with no unacked event before
    /// it, the markers among them but that last one dropped. (A marker's eligibility only
    /// grows with its id's distance from the events, so every marker before it is eligible
    /// too.) Keys wait for their marker, so that a commit's keys and marker go out together.
    fn release(&mut self, unacked: &BTreeSet<u64>) -> Released {
        let mut released = Released::default();
        let oldest_unacked = unacked.first().copied().unwrap_or(u64::MAX);
        for (task, queue) in &mut self.tasks {
            let Some(last) = queue
                .iter()
                .rposition(|(id, marker, _)| *marker && *id < oldest_unacked)
            else {
                continue;
            };
            for (at, (id, marker, entry)) in queue.drain(..=last).enumerate() {
                if marker && at != last {
                    released.dropped.push(id);
                } else {
                    released.send.push((id, marker.then_some(*task), entry));
                }
            }
        }
        self.tasks.retain(|_, queue| !queue.is_empty());
        self.len = self
            .tasks
            .values()
            .map(std::collections::VecDeque::len)
            .sum();
        released
    }
}

/// Asks a [`relay`] to stop and waits up to `limit` for it to publish what is left; after
/// that it is aborted (what it did not publish stays in the outbox for the next start).
pub async fn stop_within(
    stop: tokio::sync::watch::Sender<bool>,
    mut relay: tokio::task::JoinHandle<()>,
    limit: Duration,
) {
    let _ = stop.send(true);
    if tokio::time::timeout(limit, &mut relay).await.is_err() {
        tracing::warn!(
            "The relay did not publish its outbox in time; the rest waits for the next start"
        );
        relay.abort();
    }
}

/// Sends one entry; the answer names the entry, and the task if it is a changelog marker.
async fn publish(
    producer: Producer,
    id: u64,
    marker: Option<i32>,
    entry: OutgoingRecord,
) -> (u64, Option<i32>, Result<Delivery>) {
    let result = producer.send_record(&entry).await;
    (id, marker, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relay publishing one changelog marker of task 0 through a broker that answers each
    /// request after 1 s, the task given up (`release`) or not while the marker is in flight: the checkpoint
    /// the relay then records.
    async fn checkpoint_after_a_slow_ack(release: bool) -> Option<i64> {
        use crate::kafka::broker::EmbeddedBroker;
        use crate::store::changelog::{Changelog, Marker};
        let broker = EmbeddedBroker::start(1).expect("broker");
        broker.create_topic("t.changelog", 1, 1).expect("topic");
        let store = Store::temporary().expect("store");
        let gate = Gate::new("t.changelog", store.clone());
        gate.own(0);
        let log = Changelog {
            topic: "t.changelog".into(),
            group: "g".into(),
            inputs: vec!["in".into()],
        };
        let marker = log.marker(0, &Marker::from([("in".to_owned(), 1)]));
        store.outbox().queue(&[marker]).expect("queued");
        // Nothing it sends is encoded, so the registry is never called.
        let codec = crate::codec::Codec::new(
            crate::registry::Client::new("http://127.0.0.1:1").expect("client"),
        );
        let producer = Producer::new(broker.bootstrap_servers(), codec, &[]).expect("producer");
        broker
            .mock()
            .broker_round_trip_time(-1, Duration::from_secs(1))
            .expect("rtt");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let relaying = tokio::spawn(relay(
            store.outbox().clone(),
            producer,
            Some(gate.clone()),
            stopped,
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        if release {
            gate.release(0);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !store.outbox().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the marker was never acked"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = stop.send(true);
        let _ = relaying.await;
        store.checkpoint("t.changelog", 0).expect("checkpoint")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_acked_marker_moves_the_checkpoint_only_of_a_task_still_owned() {
        assert_eq!(checkpoint_after_a_slow_ack(false).await, Some(1));
        assert_eq!(
            checkpoint_after_a_slow_ack(true).await,
            None,
            "given up while in flight: a standby may have rebuilt the task without it"
        );
    }

    fn entry(key: &[u8]) -> OutgoingRecord {
        OutgoingRecord {
            topic: "t.changelog".into(),
            partition: Some(0),
            key: key.to_vec(),
            payload: Some(b"v".to_vec()),
            headers: Vec::new(),
        }
    }

    fn ids(ready: &[Ready]) -> Vec<u64> {
        ready.iter().map(|(id, _, _)| *id).collect()
    }

    #[test]
    fn a_tasks_changelog_goes_out_up_to_its_last_marker_whose_events_are_all_acked() {
        let mut behind = Behind::default();
        // The commit's event (id 9) is in flight: its key and marker wait.
        let mut unacked = BTreeSet::from([9]);
        behind.push(0, 10, false, entry(b"k1"));
        behind.push(0, 11, true, entry(MARKER));
        assert!(behind.release(&unacked).send.is_empty());
        // Two more commits queue behind, in order; their events (17, 18) are in flight.
        for (id, marker) in [(12, false), (13, true), (14, false), (15, true)] {
            behind.push(0, id, marker, entry(if marker { MARKER } else { b"k" }));
        }
        unacked.extend([17, 18]);
        // Another task's marker waits for the events before it, whatever their task.
        behind.push(1, 16, true, entry(MARKER));
        assert!(
            behind.release(&unacked).send.is_empty(),
            "event 9 holds all back"
        );
        assert_eq!(behind.len(), 7);
        // Event 9 acked: every marker is older than the events still in flight, so task 0's
        // entries go up to its last marker, the two before it dropped; task 1's goes.
        unacked.remove(&9);
        let released = behind.release(&unacked);
        assert_eq!(ids(&released.send), [10, 12, 14, 15, 16]);
        assert_eq!(released.send[3].1, Some(0));
        assert_eq!(released.send[4].1, Some(1));
        assert_eq!(released.send[0].1, None);
        assert_eq!(released.dropped, [11, 13]);
        assert_eq!(behind.len(), 0);
        // A commit after event 17: its key and marker wait for it, then go together.
        behind.push(0, 19, false, entry(b"k"));
        behind.push(0, 20, true, entry(MARKER));
        assert!(behind.release(&unacked).send.is_empty());
        unacked.remove(&17);
        assert!(
            behind.release(&unacked).send.is_empty(),
            "event 18 is older too"
        );
        unacked.remove(&18);
        assert_eq!(ids(&behind.release(&unacked).send), [19, 20]);
        // Keys whose marker is not read yet wait for it.
        behind.push(2, 21, false, entry(b"k"));
        assert!(behind.release(&unacked).send.is_empty());
        // Taking all back empties it: the ids are read again from the outbox.
        behind.push(2, 22, true, entry(MARKER));
        assert_eq!(behind.take_all(), HashSet::from([21, 22]));
        assert_eq!(behind.len(), 0);
    }

    #[test]
    fn entries_survive_their_stored_form_and_garbage_is_refused() {
        let entry = OutgoingRecord {
            topic: "t".into(),
            partition: None,
            key: b"k".to_vec(),
            payload: Some(vec![0, 0, 0, 0, 1, 42]),
            headers: vec![("event_id".into(), b"e1".to_vec())],
        };
        let tombstone = OutgoingRecord {
            partition: Some(3),
            payload: None,
            ..entry.clone()
        };
        for entry in [entry, tombstone] {
            assert_eq!(decode(&encode(&entry)), Some(entry.clone()));
            let bytes = encode(&entry);
            // The trailer is optional, so a cut just before it still reads (as an entry
            // written before the trailer existed); every other cut is refused.
            let trailer = if entry.partition.is_some() { 5 } else { 0 };
            for cut in (0..bytes.len()).filter(|cut| *cut != bytes.len() - trailer) {
                assert_eq!(decode(&bytes[..cut]), None);
            }
        }
    }
}
