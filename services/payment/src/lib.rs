//! The payment service: a balance per user and currency; charges a booking's bundled total and
//! refunds it, idempotently per booking, and declines with a reason when funds are short.
//!
//! Payment commands are keyed by user id, so one balance has one writer and two bookings of
//! one user can never spend the same money twice.

use std::future::Future;

use events::{
    AccountCredited, ChargePayment, Money, PaymentCharged, PaymentDeclined, PaymentRefunded,
    RefundPayment, topics,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use streams::processor::{Context, Handler, HandlerError, Record};
use streams::service::Settings;
use streams::store::Store;

/// The service's consumer group.
pub const GROUP: &str = "payment";

/// The topics payment reads: its commands.
pub const TOPICS: &[&str] = &[topics::PAYMENT_COMMANDS];

/// Payment reads no global table.
pub const GLOBALS: &[&str] = &[];

/// Runs the payment service until `shutdown`.
///
/// # Errors
///
/// When the store cannot be opened or the broker cannot be reached at start.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> streams::Result<()> {
    streams::service::run(
        GROUP,
        &topics::service_topics(TOPICS, GLOBALS, topics::PAYMENT_CHANGELOG)?,
        &settings,
        Payments,
        shutdown,
    )
    .await
}

/// What happened to one booking's payment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Charge {
    /// Charged.
    Charged {
        /// Who paid.
        user_id: String,
        /// How much.
        amount: Money,
    },
    /// Declined, with the reason.
    Declined {
        /// How much was asked.
        amount: Money,
        /// Why.
        reason: String,
    },
    /// Given back (an amount of zero when nothing had been charged).
    Refunded {
        /// Who had paid.
        user_id: String,
        /// How much was given back.
        amount: Money,
    },
}

fn balance_key(user_id: &str, currency: &str) -> String {
    format!("balance/{user_id}/{currency}")
}

fn charge_key(booking_id: &str) -> String {
    format!("charge/{booking_id}")
}

/// The handler: credits, charges and refunds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Payments;

impl Handler for Payments {
    async fn handle(&self, ctx: &mut Context<'_>, record: &Record<'_>) -> Result<(), HandlerError> {
        match record.event_type() {
            Some(AccountCredited::TYPE) => {
                let credit: AccountCredited = ctx.decode(record).await?;
                if credit.amount.amount <= Decimal::ZERO {
                    return Err(HandlerError::Invalid(format!(
                        "a credit must be positive, not {}",
                        credit.amount
                    )));
                }
                add(ctx, &credit.user_id, &credit.amount)
            }
            Some(ChargePayment::TYPE) => charge(ctx, ctx.decode(record).await?).await,
            Some(RefundPayment::TYPE) => refund(ctx, ctx.decode(record).await?).await,
            other => Err(HandlerError::unhandled("payment", other)),
        }
    }
}

fn add(ctx: &mut Context<'_>, user_id: &str, amount: &Money) -> Result<(), HandlerError> {
    let key = balance_key(user_id, &amount.currency);
    let balance = ctx.get_json::<Decimal>(&key)?.unwrap_or(Decimal::ZERO);
    let Some(sum) = balance.checked_add(amount.amount) else {
        return Err(HandlerError::Invalid(format!(
            "the balance of {user_id} would overflow"
        )));
    };
    ctx.put_json(&key, &sum)?;
    Ok(())
}

async fn charge(ctx: &mut Context<'_>, command: ChargePayment) -> Result<(), HandlerError> {
    let key = charge_key(&command.booking_id);
    // A repeated command gets the same answer again, never a second charge.
    let outcome = match ctx.get_json::<Charge>(&key)? {
        Some(outcome) => outcome,
        None => {
            let balance = ctx
                .get_json::<Decimal>(&balance_key(&command.user_id, &command.amount.currency))?
                .unwrap_or(Decimal::ZERO);
            let outcome = if command.amount.amount <= Decimal::ZERO {
                Charge::Declined {
                    amount: command.amount.clone(),
                    reason: format!("cannot charge {}", command.amount),
                }
            } else if balance < command.amount.amount {
                Charge::Declined {
                    amount: command.amount.clone(),
                    reason: format!(
                        "insufficient funds: balance {} {}, needed {}",
                        balance, command.amount.currency, command.amount
                    ),
                }
            } else {
                let negative = Money::new(-command.amount.amount, &command.amount.currency);
                add(ctx, &command.user_id, &negative)?;
                Charge::Charged {
                    user_id: command.user_id.clone(),
                    amount: command.amount.clone(),
                }
            };
            ctx.put_json(&key, &outcome)?;
            outcome
        }
    };
    match outcome {
        Charge::Charged { user_id, amount } => {
            let charged = PaymentCharged {
                booking_id: command.booking_id,
                user_id,
                amount,
            };
            ctx.emit(topics::PAYMENT_EVENTS, &charged).await
        }
        Charge::Declined { amount, reason } => {
            let declined = PaymentDeclined {
                booking_id: command.booking_id,
                user_id: command.user_id,
                amount,
                reason,
            };
            ctx.emit(topics::PAYMENT_EVENTS, &declined).await
        }
        Charge::Refunded { .. } => {
            let declined = PaymentDeclined {
                booking_id: command.booking_id,
                user_id: command.user_id,
                amount: command.amount,
                reason: "the booking's payment was already refunded".into(),
            };
            ctx.emit(topics::PAYMENT_EVENTS, &declined).await
        }
    }
}

async fn refund(ctx: &mut Context<'_>, command: RefundPayment) -> Result<(), HandlerError> {
    let key = charge_key(&command.booking_id);
    let amount = match ctx.get_json::<Charge>(&key)? {
        Some(Charge::Charged { user_id, amount }) => {
            add(ctx, &user_id, &amount)?;
            amount
        }
        Some(Charge::Refunded { amount, .. }) => amount,
        Some(Charge::Declined { amount, .. }) => Money::zero(amount.currency),
        // Nothing charged: remember the refund, so that a late charge is declined.
        None => Money::zero("EUR"),
    };
    ctx.put_json(
        &key,
        &Charge::Refunded {
            user_id: command.user_id.clone(),
            amount: amount.clone(),
        },
    )?;
    let refunded = PaymentRefunded {
        booking_id: command.booking_id,
        user_id: command.user_id,
        amount,
        cancellation: command.cancellation,
    };
    ctx.emit(topics::PAYMENT_EVENTS, &refunded).await
}

/// A user's balance in one currency; zero for a user never credited in it.
///
/// # Errors
///
/// When the store cannot be read or the balance stored does not decode.
pub fn balance(store: &Store, user_id: &str, currency: &str) -> streams::Result<Decimal> {
    Ok(store
        .get(balance_key(user_id, currency).as_bytes())?
        .map(|v| {
            serde_json::from_slice(&v).map_err(|e| {
                streams::Error::Store(format!("balance of {user_id} in {currency}: {e}"))
            })
        })
        .transpose()?
        .unwrap_or(Decimal::ZERO))
}

/// Every booking's payment outcome, by booking id.
///
/// # Errors
///
/// When the store cannot be read or any charge stored does not decode.
pub fn charges(store: &Store) -> streams::Result<Vec<(String, Charge)>> {
    store
        .scan(b"charge/")?
        .into_iter()
        .map(|(k, v)| {
            let booking = String::from_utf8_lossy(&k["charge/".len()..]).into_owned();
            match serde_json::from_slice(&v) {
                Ok(charge) => Ok((booking, charge)),
                Err(e) => Err(streams::Error::Store(format!(
                    "charge of booking {booking}: {e}"
                ))),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(entries: &[(String, Vec<u8>)]) -> Store {
        Store::temporary_with(entries.iter().cloned()).expect("store")
    }

    #[test]
    fn a_user_never_credited_has_a_zero_balance() {
        let store = store_with(&[]);
        assert_eq!(balance(&store, "u", "EUR").expect("read"), Decimal::ZERO);
        assert!(charges(&store).expect("read").is_empty());
    }

    #[test]
    fn an_unreadable_balance_or_charge_is_an_error_not_zero_or_a_gap() {
        let store = store_with(&[
            (balance_key("u", "EUR"), b"lots".to_vec()),
            (charge_key("b-1"), b"{".to_vec()),
        ]);
        let error = balance(&store, "u", "EUR").expect_err("the balance does not decode");
        assert!(error.to_string().contains("balance of u in EUR"), "{error}");
        let error = charges(&store).expect_err("the charge does not decode");
        assert!(error.to_string().contains("booking b-1"), "{error}");
    }
}
