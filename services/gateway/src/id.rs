//! Ids as the HTTP API takes them, checked once at the edge so no handler sees a malformed one.
//!
//! The events keep ids as strings (their Avro schemas say `string`, and any producer may write
//! them); these types guard what enters through the gateway: path parameters and request bodies.
//! An id is 1 to [`MAX_LEN`] ASCII letters, digits, `-`, `_` or `.`, which every id the system
//! mints (UUIDs) and every catalog id in use fits.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest id accepted.
pub const MAX_LEN: usize = 64;

/// Why a text is not an id.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdError {
    /// Nothing given.
    Empty,
    /// Longer than [`MAX_LEN`] bytes.
    TooLong(usize),
    /// A character ids do not use.
    Character(char),
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdError::Empty => write!(f, "must not be empty"),
            IdError::TooLong(len) => {
                write!(f, "must be at most {MAX_LEN} characters, not {len}")
            }
            IdError::Character(c) => write!(
                f,
                "must be ASCII letters, digits, '-', '_' or '.', not {c:?}"
            ),
        }
    }
}

impl std::error::Error for IdError {}

fn check(text: &str) -> Result<(), IdError> {
    if text.is_empty() {
        return Err(IdError::Empty);
    }
    if text.len() > MAX_LEN {
        return Err(IdError::TooLong(text.len()));
    }
    match text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        Some(c) => Err(IdError::Character(c)),
        None => Ok(()),
    }
}

macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks `text` against the id rules (see the [module](self) docs).
            ///
            /// # Errors
            ///
            /// [`IdError`] saying what is wrong with it.
            pub fn parse(text: impl Into<String>) -> Result<Self, IdError> {
                let text = text.into();
                check(&text)?;
                Ok($name(text))
            }

            /// The id.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id, for an event's `string` field.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;

            fn try_from(text: String) -> Result<Self, IdError> {
                $name::parse(text)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id!(
    /// A booking, as `GET /v1/bookings/{id}` names it.
    BookingId
);
id!(
    /// A flight of the catalog, as a booking request names it.
    FlightId
);
id!(
    /// A hotel of the catalog, as a booking request names it.
    HotelId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_the_system_mints_and_the_catalog_uses_parse() {
        for text in [
            uuid::Uuid::new_v4().to_string(),
            streams::kafka::headers::derived_id(&[b"user", b"key"]),
            "LH1".into(),
            "FRA-CENTRAL".into(),
            "b_1.2".into(),
            "x".repeat(MAX_LEN),
        ] {
            assert_eq!(
                BookingId::parse(text.clone()).expect("an id").as_str(),
                text
            );
        }
    }

    #[test]
    fn empty_long_and_strange_ids_are_refused_with_the_reason() {
        assert_eq!(FlightId::parse(""), Err(IdError::Empty));
        assert_eq!(
            HotelId::parse("x".repeat(MAX_LEN + 1)),
            Err(IdError::TooLong(MAX_LEN + 1))
        );
        for (text, bad) in [
            ("a/b", '/'),
            ("a b", ' '),
            ("ü", 'ü'),
            ("a\n", '\n'),
            ("%2F", '%'),
        ] {
            assert_eq!(
                BookingId::parse(text),
                Err(IdError::Character(bad)),
                "{text}"
            );
        }
        assert!(
            IdError::TooLong(65).to_string().contains("at most 64"),
            "a sentence a client can act on"
        );
    }

    #[test]
    fn a_body_with_a_bad_id_fails_to_parse_naming_the_field() {
        #[derive(Debug, Deserialize)]
        struct Body {
            flight_id: FlightId,
        }
        let error = web::parse::<Body>(br#"{"flight_id": "a b"}"#).expect_err("a bad id");
        assert_eq!(error.status, axum::http::StatusCode::BAD_REQUEST);
        assert!(
            error.message.starts_with("flight_id: must be ASCII"),
            "{}",
            error.message
        );
        let body: Body = web::parse(br#"{"flight_id": "LH1"}"#).expect("a good id");
        assert_eq!(body.flight_id.as_str(), "LH1");
        assert_eq!(
            serde_json::to_string(&body.flight_id).expect("encodes"),
            r#""LH1""#,
            "a plain string on the wire"
        );
    }
}
