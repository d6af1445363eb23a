//! The read side: sagas as the store holds them, for tests, the demo and consistency checks.

use streams::store::Store;

use crate::handler::{SAGA, saga_key};
use crate::saga::Saga;

/// One booking's saga, if the service started it.
///
/// # Errors
///
/// When the store cannot be read.
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
/// When the store cannot be read.
pub fn sagas(store: &Store) -> streams::Result<Vec<Saga>> {
    Ok(store
        .scan(SAGA.as_bytes())?
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
        .collect())
}

fn decode(booking_id: &str, value: &[u8]) -> streams::Result<Saga> {
    serde_json::from_slice(value)
        .map_err(|e| streams::Error::Store(format!("saga {booking_id}: {e}")))
}
