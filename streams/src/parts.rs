//! Length-prefixed parts: a list of byte strings kept in one sled value.
//!
//! An outbox entry's fields and a chunk of event ids are stored this way.

/// Appends `part` with its length.
pub(crate) fn put_part(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&(part.len() as u32).to_be_bytes());
    out.extend_from_slice(part);
}

/// The part at `at`, moving `at` past it; `None` past the end or on a length that overruns.
pub(crate) fn take_part<'a>(bytes: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let len = u32::from_be_bytes(bytes.get(*at..*at + 4)?.try_into().ok()?) as usize;
    let part = bytes.get(*at + 4..(*at + 4).checked_add(len)?)?;
    *at += 4 + len;
    Some(part)
}
