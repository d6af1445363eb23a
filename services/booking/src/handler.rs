//! The processor's handler: each record advances its saga, and the saga's commands are emitted.
//!
//! Delivery guarantee, the processor's: effects effectively-once, since the saga, the open-saga
//! index, the record's offset and the commands (in the outbox) are written in one transaction;
//! commands at-least-once, each with the event id its consumer dedupes by. This module also
//! owns the store's layout, which the time-out sweep and the queries read.
//!
//! No clock is read here: an outcome is stamped with the log timestamp of the record that
//! decides it (or, for a record without one, a time the record or its saga carries), so a
//! replay stamps and decides exactly as the live run did.

use events::{
    BookingCancelled, BookingConfirmed, BookingRequested, BookingTimedOut, CancellationReason,
    PaymentCharged, PaymentDeclined, PaymentRefunded, RoomsRefused, RoomsReleased, RoomsReserved,
    SeatsRefused, SeatsReleased, SeatsReserved, topics,
};
use streams::processor::{Context, Handler, HandlerError, Record};

use crate::saga::{Command, Reply, Saga};

/// Key prefix of sagas: booking id → [`Saga`].
pub(crate) const SAGA: &str = "saga/";

/// Key prefix of open sagas: booking id → [`Open`].
pub(crate) const OPEN: &str = "open/";

/// Key prefix of replies read before their booking's request: booking id → [`Early`] list.
pub(crate) const EARLY: &str = "early/";

/// Replies kept for one booking whose request has not been read; one more is dead-lettered.
/// A saga gets at most six replies (seats, rooms and payment, each held and given back).
const EARLY_REPLIES: usize = 16;

/// A reply read before its booking's request, kept to be applied right after the request.
///
/// Live, a reply comes after its request: the request's commands asked for it. But a task
/// taken over from a killed instance is restored to its last whole commit in the changelog,
/// and the request and its replies after that commit are read again from their own topics,
/// in no fixed order between them: the commands escaped before the killed instance's changelog
/// did. Applied after the request, each with its own timestamp and ids, a kept reply has the
/// effects it had on the instance that died (so its emitted copies are deduped downstream),
/// and the saga ends as a replay in log order leaves it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Early {
    reply: Reply,
    /// The reply record's log timestamp.
    at: Option<i64>,
    /// The reply record's metadata: the cause of what applying it emits.
    cause: streams::kafka::Metadata,
}

fn early_key(booking_id: &str) -> String {
    format!("{EARLY}{booking_id}")
}

/// What the time-out sweep needs of an open saga: (user id, requested at). A pair, not a
/// struct: it is stored as a JSON array (`["u-1", 1700000000000]`), and a struct would change
/// the format of every existing store.
pub(crate) type Open = (String, i64);

pub(crate) fn saga_key(booking_id: &str) -> String {
    format!("{SAGA}{booking_id}")
}

/// The handler: booking requests and every reply.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sagas;

impl Handler for Sagas {
    async fn handle(&self, ctx: &mut Context<'_>, record: &Record<'_>) -> Result<(), HandlerError> {
        let (booking_id, reply) = match record.event_type() {
            Some(BookingRequested::TYPE) => {
                let request: BookingRequested = ctx.decode(record).await?;
                let key = saga_key(&request.booking_id);
                if ctx.get_json::<Saga>(&key)?.is_some() {
                    // The same booking id asked twice: the first request stands.
                    return Ok(());
                }
                let now = record.timestamp.unwrap_or(request.requested_at);
                let (mut saga, commands) = Saga::start(request, now);
                send(ctx, commands).await?;
                let early = early_key(&saga.request.booking_id);
                if let Some(replies) = ctx.get_json::<Vec<Early>>(&early)? {
                    ctx.remove(early.into_bytes());
                    for Early { reply, at, cause } in replies {
                        let now = at.unwrap_or(saga.request.requested_at);
                        if let Some(commands) = saga.reply(reply, now) {
                            send_as(ctx, Some(&cause), commands).await?;
                        }
                    }
                }
                save(ctx, &saga)?;
                return Ok(());
            }
            Some(BookingTimedOut::TYPE) => {
                let timed_out: BookingTimedOut = ctx.decode(record).await?;
                let key = saga_key(&timed_out.booking_id);
                let Some(mut saga) = ctx.get_json::<Saga>(&key)? else {
                    return Ok(());
                };
                let now = record.timestamp.unwrap_or(timed_out.deadline);
                return match saga.time_out(now) {
                    Some(commands) => {
                        save(ctx, &saga)?;
                        send(ctx, commands).await
                    }
                    // Finished before the time-out came back: nothing to undo.
                    None => Ok(()),
                };
            }
            // The saga's own announcements, read back from `bookings`.
            Some(BookingConfirmed::TYPE | BookingCancelled::TYPE) => return Ok(()),
            Some(SeatsReserved::TYPE) => {
                let e: SeatsReserved = ctx.decode(record).await?;
                (e.booking_id, Reply::SeatsHeld(e.price))
            }
            Some(SeatsRefused::TYPE) => {
                let e: SeatsRefused = ctx.decode(record).await?;
                (e.booking_id, Reply::SeatsRefused(e.reason))
            }
            Some(SeatsReleased::TYPE) => {
                let e: SeatsReleased = ctx.decode(record).await?;
                (
                    e.booking_id,
                    Reply::SeatsReleased(CancellationReason::from_symbol(&e.cancellation)),
                )
            }
            Some(RoomsReserved::TYPE) => {
                let e: RoomsReserved = ctx.decode(record).await?;
                (e.booking_id, Reply::RoomsHeld(e.price))
            }
            Some(RoomsRefused::TYPE) => {
                let e: RoomsRefused = ctx.decode(record).await?;
                (e.booking_id, Reply::RoomsRefused(e.reason))
            }
            Some(RoomsReleased::TYPE) => {
                let e: RoomsReleased = ctx.decode(record).await?;
                (
                    e.booking_id,
                    Reply::RoomsReleased(CancellationReason::from_symbol(&e.cancellation)),
                )
            }
            Some(PaymentCharged::TYPE) => {
                let e: PaymentCharged = ctx.decode(record).await?;
                (e.booking_id, Reply::Charged(e.amount))
            }
            Some(PaymentDeclined::TYPE) => {
                let e: PaymentDeclined = ctx.decode(record).await?;
                (e.booking_id, Reply::Declined(e.reason))
            }
            Some(PaymentRefunded::TYPE) => {
                let e: PaymentRefunded = ctx.decode(record).await?;
                (
                    e.booking_id,
                    Reply::Refunded(CancellationReason::from_symbol(&e.cancellation)),
                )
            }
            other => return Err(HandlerError::unhandled("booking", other)),
        };
        let key = saga_key(&booking_id);
        let Some(mut saga) = ctx.get_json::<Saga>(&key)? else {
            return keep_early(ctx, record, &booking_id, reply);
        };
        let now = record.timestamp.unwrap_or(saga.request.requested_at);
        match saga.reply(reply, now) {
            Some(commands) => {
                save(ctx, &saga)?;
                send(ctx, commands).await
            }
            None => {
                tracing::debug!(booking_id, "A late or duplicate reply changes nothing");
                Ok(())
            }
        }
    }
}

/// Stores a saga, and keeps the index of open sagas the time-out sweep reads.
fn save(ctx: &mut Context<'_>, saga: &Saga) -> Result<(), HandlerError> {
    let booking_id = &saga.request.booking_id;
    ctx.put_json(&saga_key(booking_id), saga)?;
    let open = format!("{OPEN}{booking_id}");
    if saga.finished() {
        ctx.remove(open.into_bytes());
    } else {
        let entry: Open = (saga.request.user_id.clone(), saga.request.requested_at);
        ctx.put_json(&open, &entry)?;
    }
    Ok(())
}

/// Keeps a reply whose booking has no saga yet, for its request to apply ([`Early`]); past
/// [`EARLY_REPLIES`] for one booking it is dead-lettered.
fn keep_early(
    ctx: &mut Context<'_>,
    record: &Record<'_>,
    booking_id: &str,
    reply: Reply,
) -> Result<(), HandlerError> {
    let key = early_key(booking_id);
    let mut replies = ctx.get_json::<Vec<Early>>(&key)?.unwrap_or_default();
    if replies.len() >= EARLY_REPLIES {
        return Err(HandlerError::Invalid(format!(
            "a reply for booking {booking_id}, which this service never started \
             ({EARLY_REPLIES} replies for it are kept already)"
        )));
    }
    tracing::info!(
        booking_id,
        "A reply came before its booking's request; kept until the request is read"
    );
    replies.push(Early {
        reply,
        at: record.timestamp,
        cause: ctx.cause().clone(),
    });
    ctx.put_json(&key, &replies)
}

async fn send(ctx: &mut Context<'_>, commands: Vec<Command>) -> Result<(), HandlerError> {
    send_as(ctx, None, commands).await
}

/// Emits `commands` as effects of the record being processed, or with `cause` as those of an
/// earlier record ([`Context::emit_caused_by`]).
async fn send_as(
    ctx: &mut Context<'_>,
    cause: Option<&streams::kafka::Metadata>,
    commands: Vec<Command>,
) -> Result<(), HandlerError> {
    for (n, command) in commands.into_iter().enumerate() {
        match command {
            Command::ReserveSeats(c) => emit(ctx, cause, n, topics::FLIGHT_COMMANDS, &c).await?,
            Command::ReserveRooms(c) => emit(ctx, cause, n, topics::HOTEL_COMMANDS, &c).await?,
            Command::Charge(c) => emit(ctx, cause, n, topics::PAYMENT_COMMANDS, &c).await?,
            Command::ReleaseRooms(c) => emit(ctx, cause, n, topics::HOTEL_COMMANDS, &c).await?,
            Command::ReleaseSeats(c) => emit(ctx, cause, n, topics::FLIGHT_COMMANDS, &c).await?,
            Command::Refund(c) => emit(ctx, cause, n, topics::PAYMENT_COMMANDS, &c).await?,
            Command::Confirmed(e) => emit(ctx, cause, n, topics::BOOKINGS, &e).await?,
            Command::Cancelled(e) => emit(ctx, cause, n, topics::BOOKINGS, &e).await?,
        }
    }
    Ok(())
}

async fn emit<E: streams::codec::Event>(
    ctx: &mut Context<'_>,
    cause: Option<&streams::kafka::Metadata>,
    n: usize,
    topic: &str,
    event: &E,
) -> Result<(), HandlerError> {
    match cause {
        Some(cause) => ctx.emit_caused_by(cause, n, topic, event).await,
        None => ctx.emit(topic, event).await,
    }
}
