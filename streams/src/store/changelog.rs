//! The changelog records a commit adds to the outbox: each task's changed keys, then a marker.
//!
//! A task's changelog partition holds, per key, its latest value (the topic is compacted), and
//! after each commit's keys a marker with the input offsets the task has reached. Whoever
//! restores the task reads it in order: the keys after the last marker are a commit whose
//! marker never arrived (its writer died while publishing), and are undone (see
//! [`crate::processor`]'s restore).

use std::collections::BTreeMap;

use crate::kafka::OutgoingRecord;

/// The key of a marker. Service keys never start with NUL (see [`crate::store::Effects::put`]).
pub const MARKER: &[u8] = b"\0commit";

/// A service's changelog, as the commits of its processor write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changelog {
    /// The compacted topic, with a partition per task.
    pub topic: String,
    /// The consumer group whose offsets the markers carry.
    pub group: String,
    /// The input topics whose partitions make up a task (not the global tables).
    pub inputs: Vec<String>,
}

/// The input offsets a task has reached: topic → next offset.
pub type Marker = BTreeMap<String, i64>;

impl Changelog {
    /// A record of `key` (the service's key) in task `task`; `None`: the key was removed.
    pub(crate) fn change(&self, task: i32, key: &[u8], value: Option<&[u8]>) -> OutgoingRecord {
        OutgoingRecord {
            topic: self.topic.clone(),
            partition: Some(task),
            key: key.to_vec(),
            payload: value.map(<[u8]>::to_vec),
            headers: Vec::new(),
        }
    }

    /// The marker that closes a commit of task `task`.
    pub(crate) fn marker(&self, task: i32, reached: &Marker) -> OutgoingRecord {
        // A map of strings to integers always serializes.
        let payload = serde_json::to_vec(reached).unwrap_or_default();
        self.change(task, MARKER, Some(&payload))
    }
}

/// A marker's offsets; `None` for a value this runtime did not write.
pub fn read_marker(value: &[u8]) -> Option<Marker> {
    serde_json::from_slice(value).ok()
}
