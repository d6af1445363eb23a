//! `events::topics` is `topics/`: the embedded specs are the files, each parses to the spec
//! `TopicSet::load` validates, and every topic's constant names it.

use std::path::Path;

use events::topics;
use streams::kafka::topic::TopicSet;

fn topics_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topics")
}

#[test]
fn the_embedded_specs_are_exactly_the_validated_specs_of_topics() {
    let set = TopicSet::load(&topics_dir()).expect("topics/ is valid");
    assert_eq!(topics::specs(), set.declared());
    for file in topics::FILES {
        let on_disk = std::fs::read_to_string(topics_dir().join(file.file)).expect("spec file");
        assert_eq!(file.text, on_disk, "{}", file.file);
    }
    assert_eq!(topics::FILES.len(), set.declared().len());
}

#[test]
fn every_topic_but_the_internal_ones_has_a_constant_with_its_name() {
    let constants = [
        topics::BOOKING_CHANGELOG,
        topics::BOOKINGS,
        topics::FLIGHT_CHANGELOG,
        topics::FLIGHT_COMMANDS,
        topics::FLIGHT_EVENTS,
        topics::FLIGHTS,
        topics::HOTEL_CHANGELOG,
        topics::HOTEL_COMMANDS,
        topics::HOTEL_EVENTS,
        topics::HOTELS,
        topics::PAYMENT_CHANGELOG,
        topics::PAYMENT_COMMANDS,
        topics::PAYMENT_EVENTS,
        topics::USERS,
    ];
    let public: Vec<&str> = topics::specs()
        .iter()
        .map(|spec| spec.name.as_str())
        .filter(|name| !name.starts_with('_'))
        .collect();
    assert_eq!(constants.as_slice(), public.as_slice());
    assert_eq!(topics::FLIGHT_COMMANDS, "flight.commands");
    let schemas = topics::spec("_schemas").expect("the registry's topic is embedded");
    assert_eq!(schemas.partitions, 1);
    assert_eq!(
        topics::spec(topics::BOOKINGS).and_then(|s| s.dead_letter.as_deref()),
        Some("bookings.dlq")
    );
}
