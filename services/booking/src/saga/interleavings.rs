//! The saga in every order its inputs can come in, explored exhaustively: a saga's inputs are
//! few enough that every order is cheaper to check than a random sample of them.
//!
//! For each scenario (what the flight, hotel and payment services answer, whether the time-out
//! comes, once or announced again, and whether every answer comes twice) two things are
//! explored:
//!
//! - Live: the services answer each command the saga sends, in the order it was sent, on
//!   their topic, and the saga reads the topics' heads in every order, the time-out at any
//!   point. Each run ends when everything sent is answered and read.
//! - Replay: each run's logs (the answers on each topic, and the time-outs) are read again in
//!   every order that keeps each topic's own. This is also what an instance that takes a task
//!   over does, from the state its changelog held on: it reads the records after it again, in
//!   whatever order it polls them, and sends what the saga says (the services answer a
//!   command sent again as before, so only the announcements are checked).
//!
//! What must hold, for every run:
//!
//! - The saga is finished and no longer awaits its deadline.
//! - Seats and rooms are asked once each (none for an invalid request); the charge once if both
//!   were held, in one currency, before any time-out was read, else never.
//! - It is confirmed iff that charge was charged, with its amount; otherwise cancelled, for the
//!   failure of highest priority that happened: invalid request (or prices in different
//!   currencies), seats refused, rooms refused, payment declined, then the time-out (when the
//!   charge was never asked). Exactly one announcement is made, and it says the same.
//! - Each release and refund is asked at most once; everything a service held is given back
//!   iff the saga was cancelled; a release asked of a step its service never held is one the
//!   time-out queued behind an unanswered reservation; confirmed, nothing is given back.
//! - Every live run that wrote the same logs ends in the same saga, and every replay of those
//!   logs, in every order, ends in that saga too (so the store a replay rebuilds equals the
//!   live one), announcing on the way only what the live run announced. Without a time-out,
//!   every run of a scenario ends in the same saga.
//! - Settling again changes nothing and sends nothing, after every input; once a time-out
//!   applies, every reservation still unanswered has its release asked (queued behind it), so
//!   a service that is down leaves nothing to ask later.

use std::collections::{BTreeMap, HashMap};

use events::{FlightSelection, HotelSelection};
use rust_decimal::Decimal;

use super::*;

const NOW: i64 = 1_700_000_000_000;

/// The topics the saga reads replies on, by index.
const FLIGHT: usize = 0;
const HOTEL: usize = 1;
const PAYMENT: usize = 2;

fn money(amount: i64, currency: &str) -> Money {
    Money::new(Decimal::new(amount, 0), currency)
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    invalid: bool,
    seats: bool,
    rooms: bool,
    /// The rooms are priced in another currency than the seats.
    rooms_in_usd: bool,
    charged: bool,
    /// How many time-outs the sweep announces (a second one: announced again).
    time_outs: usize,
    /// Every answer is given twice (a command delivered twice is answered again).
    twice: bool,
}

impl Scenario {
    fn all() -> Vec<Scenario> {
        let mut all = vec![Scenario {
            invalid: true,
            seats: true,
            rooms: true,
            rooms_in_usd: false,
            charged: true,
            time_outs: 0,
            twice: false,
        }];
        for seats in [true, false] {
            for rooms in [true, false] {
                let both = seats && rooms;
                for rooms_in_usd in [false, true] {
                    for charged in [true, false] {
                        if (rooms_in_usd || !charged) && !both || rooms_in_usd && !charged {
                            continue;
                        }
                        for time_outs in 0..=2 {
                            for twice in [false, true] {
                                all.push(Scenario {
                                    invalid: false,
                                    seats,
                                    rooms,
                                    rooms_in_usd,
                                    charged,
                                    time_outs,
                                    twice,
                                });
                            }
                        }
                    }
                }
            }
        }
        all
    }

    fn request(&self) -> BookingRequested {
        BookingRequested {
            booking_id: "b".into(),
            user_id: "u".into(),
            flight: FlightSelection {
                flight_id: "f".into(),
                seats: if self.invalid { 0 } else { 1 },
            },
            hotel: HotelSelection {
                hotel_id: "h".into(),
                check_in: 1,
                check_out: 2,
                rooms: 1,
            },
            extras: vec![],
            requested_at: 0,
        }
    }

    /// Whether the charge must be asked in a run: both held, in one currency, before the time-out.
    fn charge_asked(&self, time_out_first: bool) -> bool {
        !self.invalid && self.seats && self.rooms && !self.rooms_in_usd && !time_out_first
    }

    /// The outcome a run must end with: confirmed with the total, or the failure of highest
    /// priority among those that happened.
    fn outcome(&self, time_out_first: bool) -> Outcome {
        let charge = self.charge_asked(time_out_first);
        if self.invalid || self.seats && self.rooms && self.rooms_in_usd {
            Err(CancellationReason::InvalidRequest)
        } else if !self.seats {
            Err(CancellationReason::SeatsUnavailable)
        } else if !self.rooms {
            Err(CancellationReason::RoomsUnavailable)
        } else if charge && !self.charged {
            Err(CancellationReason::PaymentDeclined)
        } else if !charge {
            Err(CancellationReason::TimedOut)
        } else {
            Ok(money(180, "EUR"))
        }
    }
}

/// One live run so far: the saga, the logs its commands led to, how far each is read, and what
/// each service holds for the booking.
#[derive(Debug, Clone)]
struct Live {
    saga: Saga,
    logs: [Vec<Reply>; 3],
    read: [usize; 3],
    time_outs: usize,
    /// A time-out was read before both reservations were answered.
    time_out_first: bool,
    sent: Vec<Command>,
    seats_held: bool,
    rooms_held: bool,
    charged: bool,
    /// What the services ever held, whatever was given back later.
    ever_held: [bool; 3],
}

impl Live {
    fn start(scenario: &Scenario) -> Live {
        let (saga, commands) = Saga::start(scenario.request(), NOW);
        let mut live = Live {
            saga,
            logs: Default::default(),
            read: [0; 3],
            time_outs: 0,
            time_out_first: false,
            sent: Vec::new(),
            seats_held: false,
            rooms_held: false,
            charged: false,
            ever_held: [false; 3],
        };
        live.serve(scenario, commands);
        live
    }

    /// The services answer the commands, in the order sent, on their topics.
    fn serve(&mut self, scenario: &Scenario, commands: Vec<Command>) {
        for command in commands {
            let (topic, answer) = match &command {
                Command::ReserveSeats(_) if scenario.seats => {
                    self.seats_held = true;
                    self.ever_held[FLIGHT] = true;
                    (FLIGHT, Reply::SeatsHeld(money(100, "EUR")))
                }
                Command::ReserveSeats(_) => (FLIGHT, Reply::SeatsRefused("sold out".into())),
                Command::ReleaseSeats(c) => {
                    self.seats_held = false;
                    (FLIGHT, Reply::SeatsReleased(echo(&c.cancellation)))
                }
                Command::ReserveRooms(_) if scenario.rooms => {
                    self.rooms_held = true;
                    self.ever_held[HOTEL] = true;
                    let currency = if scenario.rooms_in_usd { "USD" } else { "EUR" };
                    (HOTEL, Reply::RoomsHeld(money(80, currency)))
                }
                Command::ReserveRooms(_) => (HOTEL, Reply::RoomsRefused("full".into())),
                Command::ReleaseRooms(c) => {
                    self.rooms_held = false;
                    (HOTEL, Reply::RoomsReleased(echo(&c.cancellation)))
                }
                Command::Charge(c) if scenario.charged => {
                    self.charged = true;
                    self.ever_held[PAYMENT] = true;
                    (PAYMENT, Reply::Charged(c.amount.clone()))
                }
                Command::Charge(_) => (PAYMENT, Reply::Declined("no funds".into())),
                Command::Refund(c) => {
                    self.charged = false;
                    (PAYMENT, Reply::Refunded(echo(&c.cancellation)))
                }
                Command::Confirmed(_) | Command::Cancelled(_) => {
                    self.sent.push(command);
                    continue;
                }
            };
            for _ in 0..if scenario.twice { 2 } else { 1 } {
                self.logs[topic].push(answer.clone());
            }
            self.sent.push(command);
        }
    }

    fn count(&self, kind: fn(&Command) -> bool) -> usize {
        self.sent.iter().filter(|c| kind(c)).count()
    }
}

/// The cancellation a service echoes on the reply to a command that gave a step back.
fn echo(cancellation: &str) -> Option<CancellationReason> {
    let echoed = CancellationReason::from_symbol(cancellation);
    assert!(
        echoed.is_some(),
        "a release or refund says why: {cancellation:?}"
    );
    echoed
}

/// Settling again must change nothing and send nothing.
fn assert_settled(saga: &Saga) {
    let mut again = saga.clone();
    assert_eq!(again.settle(NOW), vec![], "settling again sends: {saga:?}");
    assert_eq!(&again, saga, "settling again changes the saga");
}

/// Every live run of a scenario, from `live` on: read any topic's head, or the time-out. Runs
/// that meet in one state go on as one (`seen`); returns how many orders lead from `live` to an
/// end.
fn explore(
    scenario: &Scenario,
    live: Live,
    seen: &mut HashMap<String, u64>,
    ends: &mut Vec<Live>,
) -> u64 {
    let key = format!("{live:?}");
    if let Some(orders) = seen.get(&key) {
        return *orders;
    }
    let mut orders = 0;
    for topic in [FLIGHT, HOTEL, PAYMENT] {
        if let Some(reply) = live.logs[topic].get(live.read[topic]) {
            let mut next = live.clone();
            next.read[topic] += 1;
            if let Some(commands) = next.saga.reply(reply.clone(), NOW) {
                next.serve(scenario, commands);
            }
            assert_settled(&next.saga);
            orders += explore(scenario, next, seen, ends);
        }
    }
    if live.time_outs < scenario.time_outs {
        let mut next = live.clone();
        next.time_outs += 1;
        next.time_out_first |= next.read[FLIGHT] == 0 || next.read[HOTEL] == 0;
        if let Some(commands) = next.saga.time_out(NOW) {
            next.serve(scenario, commands);
        }
        assert_settled(&next.saga);
        if next.saga.time_out_applies() {
            // A service that is down holds nothing back: its release waits in its queue.
            for step in [&next.saga.seats, &next.saga.rooms] {
                assert!(
                    step.hold != Hold::Pending || step.release == Undo::Asked,
                    "a time-out leaves a release to ask later: {:?}",
                    next.saga
                );
            }
        }
        orders += explore(scenario, next, seen, ends);
    }
    if orders == 0 {
        ends.push(live);
        orders = 1;
    }
    seen.insert(key, orders);
    orders
}

/// Every saga a replay of `logs` (and `time_outs` time-outs) can end in, reading them from
/// `read` on in every order that keeps each topic's own; returns how many orders there are.
/// Whatever it announces on the way must be `announced`, what the live run did.
fn replay(
    saga: Saga,
    logs: &[Vec<Reply>; 3],
    time_outs: usize,
    read: [usize; 4],
    announced: &Outcome,
    seen: &mut HashMap<String, u64>,
    ends: &mut Vec<Saga>,
) -> u64 {
    let key = format!("{read:?} {saga:?}");
    if let Some(orders) = seen.get(&key) {
        return *orders;
    }
    let mut orders = 0;
    for topic in [FLIGHT, HOTEL, PAYMENT] {
        if let Some(reply) = logs[topic].get(read[topic]) {
            let mut next = saga.clone();
            let sent = next.reply(reply.clone(), NOW).unwrap_or_default();
            assert_announces(&sent, announced, &next);
            assert_settled(&next);
            let mut read = read;
            read[topic] += 1;
            orders += replay(next, logs, time_outs, read, announced, seen, ends);
        }
    }
    if read[3] < time_outs {
        let mut next = saga.clone();
        let sent = next.time_out(NOW).unwrap_or_default();
        assert_announces(&sent, announced, &next);
        assert_settled(&next);
        let mut read = read;
        read[3] += 1;
        orders += replay(next, logs, time_outs, read, announced, seen, ends);
    }
    if orders == 0 {
        if !ends.contains(&saga) {
            ends.push(saga);
        }
        orders = 1;
    }
    seen.insert(key, orders);
    orders
}

/// How a saga ends: confirmed with the total, or cancelled for a reason.
type Outcome = Result<Money, CancellationReason>;

/// What `sent` announces, if anything.
fn announcements(sent: &[Command]) -> Vec<Outcome> {
    sent.iter()
        .filter_map(|c| match c {
            Command::Confirmed(c) => Some(Ok(c.total.clone())),
            Command::Cancelled(c) => Some(Err(c.reason)),
            _ => None,
        })
        .collect()
}

/// A replay announces nothing but what the live run did.
fn assert_announces(sent: &[Command], announced: &Outcome, saga: &Saga) {
    for outcome in announcements(sent) {
        assert_eq!(
            &outcome, announced,
            "a replay (or a take-over) announced what the live run did not: {saga:#?}"
        );
    }
}

fn check_run(scenario: &Scenario, run: &Live) {
    let saga = &run.saga;
    let context = format!("{scenario:?}\n{saga:#?}\nsent {:#?}", run.sent);
    assert!(saga.finished(), "unfinished: {context}");
    assert!(
        !saga.awaits_deadline(),
        "still awaits its deadline: {context}"
    );

    let reserves = usize::from(!scenario.invalid);
    assert_eq!(
        run.count(|c| matches!(c, Command::ReserveSeats(_))),
        reserves,
        "{context}"
    );
    assert_eq!(
        run.count(|c| matches!(c, Command::ReserveRooms(_))),
        reserves,
        "{context}"
    );
    let charge = scenario.charge_asked(run.time_out_first);
    assert_eq!(
        run.count(|c| matches!(c, Command::Charge(_))),
        usize::from(charge),
        "the charge: {context}"
    );

    let expected = scenario.outcome(run.time_out_first);
    assert_eq!(
        announcements(&run.sent),
        vec![expected.clone()],
        "announced: {context}"
    );
    let stored = match &saga.status {
        Status::Confirmed(total) => Ok(total.clone()),
        Status::Cancelled(reason, _) => Err(*reason),
        _ => unreachable!("finished"),
    };
    assert_eq!(stored, expected, "stored: {context}");

    let undone = [
        run.count(|c| matches!(c, Command::ReleaseSeats(_))),
        run.count(|c| matches!(c, Command::ReleaseRooms(_))),
        run.count(|c| matches!(c, Command::Refund(_))),
    ];
    let confirmed = expected.is_ok();
    let time_out_applied = scenario.time_outs > 0 && !charge;
    for step in [FLIGHT, HOTEL, PAYMENT] {
        assert!(undone[step] <= 1, "given back twice: {context}");
        if confirmed {
            assert_eq!(undone[step], 0, "given back, yet confirmed: {context}");
        } else if run.ever_held[step] {
            assert_eq!(undone[step], 1, "held and not given back: {context}");
        } else if undone[step] == 1 {
            assert!(
                time_out_applied && step != PAYMENT,
                "given back, never held: {context}"
            );
        }
    }
    assert_eq!(
        [run.seats_held, run.rooms_held, run.charged],
        [confirmed; 3],
        "held at the end: {context}"
    );
}

#[test]
fn every_order_of_a_sagas_inputs_ends_in_one_saga_live_and_replayed() {
    let (mut runs, mut replays) = (0, 0);
    for scenario in Scenario::all() {
        let mut ends = Vec::new();
        runs += explore(
            &scenario,
            Live::start(&scenario),
            &mut HashMap::new(),
            &mut ends,
        );
        let mut by_logs: BTreeMap<String, (&Live, Vec<&Live>)> = BTreeMap::new();
        for run in &ends {
            check_run(&scenario, run);
            by_logs
                .entry(format!("{:?}", run.logs))
                .or_insert((run, Vec::new()))
                .1
                .push(run);
        }
        if scenario.time_outs == 0 {
            assert!(
                ends.iter().all(|run| run.saga == ends[0].saga),
                "without a time-out, one outcome whatever the order: {scenario:?}"
            );
        }
        for (first, same_logs) in by_logs.values() {
            for run in same_logs {
                assert_eq!(
                    run.saga, first.saga,
                    "two runs wrote the same logs and ended differently: {scenario:?}"
                );
            }
            let (start, _) = Saga::start(scenario.request(), NOW);
            let mut replayed = Vec::new();
            let [announced] = &announcements(&first.sent)[..] else {
                unreachable!("checked above: one announcement");
            };
            replays += replay(
                start,
                &first.logs,
                scenario.time_outs,
                [0; 4],
                announced,
                &mut HashMap::new(),
                &mut replayed,
            );
            assert_eq!(
                replayed,
                vec![first.saga.clone()],
                "a replay ends elsewhere than the live run: {scenario:?}\nlogs {:#?}",
                first.logs
            );
        }
    }
    // A scenario list or a walk gone empty would pass vacuously.
    eprintln!("{runs} live orders and {replays} replayed orders checked");
    assert!(
        runs > 10_000 && replays > 10_000,
        "{runs} runs, {replays} replays"
    );
}
