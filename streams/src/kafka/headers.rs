//! The headers every tripstream record carries, and the event ids in them.
//!
//! `event_id` (unique per event, derived from its cause for events a processor emits;
//! consumers dedupe on it), `correlation_id` (the booking the event belongs to),
//! `causation_id` (the event that caused it), `event_type` (the record's full name) and
//! `traceparent` (W3C trace context: passed from cause to effect when the first producer set
//! one; tripstream's own producers do not start traces yet).

use rdkafka::message::Headers;
use sha2::{Digest, Sha256};

/// Header names.
pub mod header {
    /// Unique id of the event.
    pub const EVENT_ID: &str = "event_id";
    /// The business transaction (booking) the event belongs to.
    pub const CORRELATION_ID: &str = "correlation_id";
    /// The event that caused this one.
    pub const CAUSATION_ID: &str = "causation_id";
    /// The record's full name.
    pub const EVENT_TYPE: &str = "event_type";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
}

/// An event's metadata, carried in record headers (and serializable, for a handler that keeps
/// a record to apply later with its own metadata as the cause).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Metadata {
    /// Unique id of this event.
    pub event_id: String,
    /// The booking (or other business transaction) it belongs to.
    pub correlation_id: String,
    /// The event that caused it, if any.
    pub causation_id: Option<String>,
    /// The record's full name, when known.
    pub event_type: Option<String>,
    /// Trace context, passed from cause to effect.
    pub traceparent: Option<String>,
}

impl Metadata {
    /// Metadata for an event that starts a business transaction.
    pub fn new(correlation_id: impl Into<String>) -> Self {
        Metadata {
            event_id: uuid::Uuid::new_v4().to_string(),
            correlation_id: correlation_id.into(),
            causation_id: None,
            event_type: None,
            traceparent: None,
        }
    }

    /// Metadata for an event caused by `cause`: same correlation and trace, new id.
    pub fn caused_by(cause: &Metadata) -> Self {
        Metadata {
            event_id: uuid::Uuid::new_v4().to_string(),
            correlation_id: cause.correlation_id.clone(),
            causation_id: Some(cause.event_id.clone()),
            event_type: None,
            traceparent: cause.traceparent.clone(),
        }
    }

    /// Metadata for the `n`-th event that `origin` (a consumer group) emits while processing
    /// `cause`. The id is derived from the three, not drawn at random: if a crash loses the
    /// transaction after the relay published its outbox, processing `cause` again emits the
    /// same ids, and consumers skip them as duplicates instead of applying them twice.
    pub fn derived_from(cause: &Metadata, origin: &str, n: usize) -> Self {
        Metadata {
            event_id: derived_id(&[
                origin.as_bytes(),
                cause.event_id.as_bytes(),
                &(n as u64).to_be_bytes(),
            ]),
            ..Metadata::caused_by(cause)
        }
    }

    /// Reads metadata from record headers; `None` without an `event_id` header. Of a name that
    /// occurs twice, the first counts.
    pub fn from_headers<H: Headers>(headers: Option<&H>) -> Option<Self> {
        let headers = headers?;
        // One pass: a search per name walked the headers five times per record, and rdkafka
        // checks each header's name as UTF-8 every time it hands it out.
        let mut found: [Option<Option<&[u8]>>; 5] = [None; 5];
        for h in headers.iter() {
            let slot = match h.key {
                header::EVENT_ID => 0,
                header::CORRELATION_ID => 1,
                header::CAUSATION_ID => 2,
                header::EVENT_TYPE => 3,
                header::TRACEPARENT => 4,
                _ => continue,
            };
            found[slot].get_or_insert(h.value);
        }
        let [
            event_id,
            correlation_id,
            causation_id,
            event_type,
            traceparent,
        ] = found.map(|v| {
            v.flatten()
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_owned)
        });
        Some(Metadata {
            event_id: event_id?,
            correlation_id: correlation_id.unwrap_or_default(),
            causation_id,
            event_type,
            traceparent,
        })
    }

    /// The headers, as name and value pairs.
    pub fn to_pairs(&self) -> Vec<(String, Vec<u8>)> {
        self.pairs(None)
    }

    /// The headers as owned pairs, with `event_type` in place of the metadata's own when given.
    pub(crate) fn pairs(&self, event_type: Option<&str>) -> Vec<(String, Vec<u8>)> {
        self.headers(event_type)
            .map(|(name, value)| (name.to_owned(), value.as_bytes().to_vec()))
            .collect()
    }

    /// The headers as librdkafka takes them, with `event_type` in place of the metadata's own.
    pub(crate) fn header_bytes<'a>(
        &'a self,
        event_type: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        self.headers(Some(event_type))
            .map(|(name, value)| (name, value.as_bytes()))
    }

    /// The headers as (name, value), with `event_type` in place of the metadata's own when
    /// given.
    fn headers<'a>(
        &'a self,
        event_type: Option<&'a str>,
    ) -> impl Iterator<Item = (&'static str, &'a str)> {
        [
            (header::EVENT_ID, Some(self.event_id.as_str())),
            (header::CORRELATION_ID, Some(self.correlation_id.as_str())),
            (header::CAUSATION_ID, self.causation_id.as_deref()),
            (
                header::EVENT_TYPE,
                event_type.or(self.event_type.as_deref()),
            ),
            (header::TRACEPARENT, self.traceparent.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
    }
}

/// A UUID (RFC 9562 version 8) derived from `parts`: the same parts always give the same id,
/// different parts different ids (SHA-256, parts separated by a zero byte).
pub fn derived_id(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hasher.update([0]);
        }
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    // Version 8 (custom), variant 10.
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(bytes).to_string()
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, OwnedHeaders};

    use super::*;

    fn headers(pairs: &[(&str, Option<&[u8]>)]) -> OwnedHeaders {
        pairs
            .iter()
            .fold(OwnedHeaders::new(), |headers, (key, value)| {
                headers.insert(Header { key, value: *value })
            })
    }

    #[test]
    fn metadata_is_read_back_from_its_headers_with_the_first_of_a_repeated_name() {
        let mut sent = Metadata::caused_by(&Metadata::new("b1"));
        sent.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        let mut pairs: Vec<(String, Vec<u8>)> = vec![("other".into(), b"x".to_vec())];
        pairs.extend(sent.pairs(Some("tripstream.booking.BookingRequested")));
        pairs.push((header::EVENT_ID.into(), b"a later id".to_vec()));
        let borrowed: Vec<(&str, Option<&[u8]>)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), Some(v.as_slice())))
            .collect();
        let read = Metadata::from_headers(Some(&headers(&borrowed))).expect("an event id");
        assert_eq!(
            read,
            Metadata {
                event_type: Some("tripstream.booking.BookingRequested".into()),
                ..sent
            }
        );
    }

    #[test]
    fn headers_without_a_readable_event_id_give_no_metadata_and_unreadable_values_are_absent() {
        let no_id = headers(&[(header::CORRELATION_ID, Some(b"b1"))]);
        assert_eq!(Metadata::from_headers(Some(&no_id)), None);
        let null_id = headers(&[(header::EVENT_ID, None), (header::EVENT_ID, Some(b"e1"))]);
        assert_eq!(Metadata::from_headers(Some(&null_id)), None);
        assert_eq!(Metadata::from_headers::<OwnedHeaders>(None), None);
        let bad_type = headers(&[
            (header::EVENT_ID, Some(b"e1")),
            (header::EVENT_TYPE, Some(&[0xff, 0xfe])),
        ]);
        let read = Metadata::from_headers(Some(&bad_type)).expect("an event id");
        assert_eq!(read.event_id, "e1");
        assert_eq!(read.correlation_id, "");
        assert_eq!(read.event_type, None);
    }

    #[test]
    fn derived_ids_repeat_for_the_same_cause_and_differ_otherwise() {
        let cause = Metadata::new("b1");
        let id = |origin: &str, n| Metadata::derived_from(&cause, origin, n).event_id;
        assert_eq!(id("flight", 0), id("flight", 0));
        assert_ne!(id("flight", 0), id("flight", 1));
        assert_ne!(id("flight", 0), id("hotel", 0));
        assert_ne!(
            id("flight", 0),
            Metadata::derived_from(&Metadata::new("b1"), "flight", 0).event_id
        );
        let parsed = uuid::Uuid::parse_str(&id("flight", 0)).expect("a UUID");
        assert_eq!(parsed.get_version_num(), 8);
        let derived = Metadata::derived_from(&cause, "flight", 0);
        assert_eq!(
            derived.causation_id.as_deref(),
            Some(cause.event_id.as_str())
        );
        assert_eq!(derived.correlation_id, "b1");
        // Parts are separated, so moving bytes between them changes the id.
        assert_ne!(derived_id(&[b"ab", b"c"]), derived_id(&[b"a", b"bc"]));
    }
}
