//! A transaction's commit marker, appended to a partition as a broker appends one when a
//! transactional producer commits: a control batch in a Produce request.
//!
//! librdkafka's mock cluster answers a transactional producer's EndTxn but writes no marker, and
//! Tansu 0.6 does not take EndTxn at all, so the tests that need a log ending in a marker write
//! it themselves. The mock keeps the batch's records as they came (it only sets the batch's
//! offset and leader epoch), and the consumer reads it back as it would read a broker's own.
//! Neither checks the CRC, so the checksum has a test of its own.

// Only the processor tests write markers.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Appends a commit marker of producer `producer_id` to `topic`'s `partition` through the broker
/// at `address`, which must lead the partition (one address, as a one-broker embedded cluster
/// gives); panics with the broker's error code if it refuses it.
pub fn append_commit_marker(address: &str, topic: &str, partition: i32, producer_id: i64) {
    let batch = control_batch(producer_id);
    let mut request = Vec::new();
    // Request header v1: Produce (API key 0) version 3, a correlation id, a client id.
    request.extend(0i16.to_be_bytes());
    request.extend(3i16.to_be_bytes());
    request.extend(1i32.to_be_bytes());
    put_str(&mut request, "tripstream-test");
    // No transactional id, acks from the leader, a timeout, one topic with one partition.
    request.extend((-1i16).to_be_bytes());
    request.extend(1i16.to_be_bytes());
    request.extend(10_000i32.to_be_bytes());
    request.extend(1i32.to_be_bytes());
    put_str(&mut request, topic);
    request.extend(1i32.to_be_bytes());
    request.extend(partition.to_be_bytes());
    request.extend(len_i32(batch.len()).to_be_bytes());
    request.extend(&batch);

    let mut stream = TcpStream::connect(address).expect("connect to the broker");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a read timeout");
    stream
        .write_all(&len_i32(request.len()).to_be_bytes())
        .and_then(|()| stream.write_all(&request))
        .expect("send the Produce request");
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).expect("a response");
    let size = usize::try_from(i32::from_be_bytes(size)).expect("a response size");
    let mut response = vec![0u8; size];
    stream.read_exact(&mut response).expect("the response");
    // Correlation id, topic count, topic name, partition count, partition, then its error.
    let at = 4 + 4 + 2 + topic.len() + 4 + 4;
    let error = i16::from_be_bytes([response[at], response[at + 1]]);
    assert_eq!(
        error, 0,
        "the broker refused the marker: error code {error}"
    );
}

/// A record batch (magic 2) holding one control record: a COMMIT marker of `producer_id`.
fn control_batch(producer_id: i64) -> Vec<u8> {
    let now = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("a timestamp");
    // The control record: key (version 0, type 1 = commit), value (version 0, coordinator
    // epoch 0), no headers.
    let key = [0u8, 0, 0, 1];
    let value = [0u8, 0, 0, 0, 0, 0];
    let mut record = vec![0u8]; // attributes
    put_varint(&mut record, 0); // timestamp delta
    put_varint(&mut record, 0); // offset delta
    put_varint(&mut record, key.len() as i64);
    record.extend(key);
    put_varint(&mut record, value.len() as i64);
    record.extend(value);
    put_varint(&mut record, 0); // headers
    let mut records = Vec::new();
    put_varint(&mut records, record.len() as i64);
    records.extend(record);

    // What the CRC covers: from the attributes to the end.
    let mut covered = Vec::new();
    covered.extend(0x30i16.to_be_bytes()); // transactional | control
    covered.extend(0i32.to_be_bytes()); // last offset delta
    covered.extend(now.to_be_bytes()); // first timestamp
    covered.extend(now.to_be_bytes()); // max timestamp
    covered.extend(producer_id.to_be_bytes());
    covered.extend(0i16.to_be_bytes()); // producer epoch
    covered.extend((-1i32).to_be_bytes()); // base sequence
    covered.extend(1i32.to_be_bytes()); // records
    covered.extend(records);

    let mut batch = Vec::new();
    batch.extend(0i64.to_be_bytes()); // base offset (the broker assigns it)
    // The batch length counts what follows it: leader epoch, magic, CRC and the covered part.
    batch.extend(len_i32(4 + 1 + 4 + covered.len()).to_be_bytes());
    batch.extend((-1i32).to_be_bytes()); // partition leader epoch
    batch.push(2); // magic
    batch.extend(crc32c(&covered).to_be_bytes());
    batch.extend(covered);
    batch
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    out.extend(
        i16::try_from(text.len())
            .expect("a short string")
            .to_be_bytes(),
    );
    out.extend(text.as_bytes());
}

/// A zigzag varint, as record fields are written.
fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    loop {
        let byte = (zigzag & 0x7f) as u8;
        zigzag >>= 7;
        if zigzag == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn len_i32(len: usize) -> i32 {
    i32::try_from(len).expect("a small request")
}

/// CRC-32C (Castagnoli), the checksum of record batches.
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
