//! The read side: sagas as the store holds them, for tests, the demo and consistency checks.
//!
//! A stored saga that does not decode is an error the caller sees, never skipped.

use streams::store::Store;

use crate::handler::{SAGA, saga_key};
use crate::saga::Saga;

/// One booking's saga, if the service started it.
///
/// # Errors
///
/// When the store cannot be read or the saga stored does not decode.
pub fn saga(store: &Store, booking_id: &str) -> streams::Result<Option<Saga>> {
    store
        .get(saga_key(booking_id).as_bytes())?
        .map(|v| decode(booking_id, &v))
        .transpose()
}

/// Every saga.
///
/// # Errors
///
/// When the store cannot be read or any saga stored does not decode.
pub fn sagas(store: &Store) -> streams::Result<Vec<Saga>> {
    store
        .scan(SAGA.as_bytes())?
        .into_iter()
        .map(|(key, v)| decode(&String::from_utf8_lossy(&key[SAGA.len()..]), &v))
        .collect()
}

fn decode(booking_id: &str, value: &[u8]) -> streams::Result<Saga> {
    serde_json::from_slice(value)
        .map_err(|e| streams::Error::Store(format!("saga {booking_id} is unreadable: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_saga_is_an_error_not_a_gap() {
        let store =
            Store::temporary_with([(saga_key("b-1"), b"{not json".to_vec())]).expect("store");
        let error = sagas(&store).expect_err("a saga that does not decode");
        assert!(error.to_string().contains("saga b-1"), "{error}");
        assert!(saga(&store, "b-1").is_err());
        assert_eq!(saga(&store, "b-2").expect("absent is fine"), None);
    }
}
