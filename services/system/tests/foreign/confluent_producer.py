"""A booking event from Confluent's own Python producer, as any Kafka user would write it.

Run by services/system/tests/foreign.rs as:
    python confluent_producer.py REGISTRY_URL BOOTSTRAP_SERVERS SCHEMA_FILE FLIGHT_ID
Writes one FlightScheduled to `flights`, keyed by the flight id, with AvroSerializer under the
topic-record subject name strategy and no headers of tripstream's.
"""

import sys
from decimal import Decimal

from confluent_kafka import SerializingProducer
from confluent_kafka.schema_registry import (
    SchemaRegistryClient,
    topic_record_subject_name_strategy,
)
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import StringSerializer

URL, BOOTSTRAP, SCHEMA_FILE, FLIGHT_ID = sys.argv[1:5]

with open(SCHEMA_FILE, encoding="utf-8") as f:
    schema = f.read()

registry = SchemaRegistryClient({"url": URL})
producer = SerializingProducer(
    {
        "bootstrap.servers": BOOTSTRAP,
        "key.serializer": StringSerializer("utf_8"),
        "value.serializer": AvroSerializer(
            registry,
            schema,
            conf={"subject.name.strategy": topic_record_subject_name_strategy},
        ),
    }
)
producer.produce(
    topic="flights",
    key=FLIGHT_ID,
    value={
        "flight_id": FLIGHT_ID,
        "origin": "LIS",
        "destination": "OPO",
        "departs_at": 1_796_100_000_000,
        "arrives_at": 1_796_103_600_000,
        "seats": 7,
        "seat_price": {"amount": Decimal("45.50"), "currency": "EUR"},
    },
)
left = producer.flush(30)
if left:
    print(f"FAILED: {left} record(s) not delivered", flush=True)
    sys.exit(1)
print("sent", flush=True)
