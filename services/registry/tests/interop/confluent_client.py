"""Confluent's own Python client against tripstream's registry, unchanged.

Run by services/registry/tests/interop.rs as:
    python confluent_client.py REGISTRY_URL BOOTSTRAP_SERVERS TOPIC
Exits non-zero at the first expectation that does not hold.
"""

import sys

from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

URL, BOOTSTRAP, TOPIC = sys.argv[1], sys.argv[2], sys.argv[3]
SUBJECT = f"{TOPIC}-value"

V1 = """{"type": "record", "name": "Trip", "namespace": "interop",
 "fields": [{"name": "id", "type": "string"}, {"name": "nights", "type": "int"}]}"""
V2 = """{"type": "record", "name": "Trip", "namespace": "interop",
 "fields": [{"name": "id", "type": "string"}, {"name": "nights", "type": "int"},
            {"name": "city", "type": "string", "default": "Lisbon"}]}"""
BREAKING = """{"type": "record", "name": "Trip", "namespace": "interop",
 "fields": [{"name": "id", "type": "long"}]}"""

passed = 0


def expect(what, condition, detail=""):
    global passed
    if not condition:
        print(f"FAILED: {what} {detail}", flush=True)
        sys.exit(1)
    passed += 1
    print(f"ok: {what}", flush=True)


client = SchemaRegistryClient({"url": URL})

v1_id = client.register_schema(SUBJECT, Schema(V1, "AVRO"))
expect("register returns an id", isinstance(v1_id, int) and v1_id > 0, v1_id)
expect("registering again returns the same id", client.register_schema(SUBJECT, Schema(V1, "AVRO")) == v1_id)

fetched = client.get_schema(v1_id)
expect("fetch by id returns the schema", '"nights"' in fetched.schema_str, fetched.schema_str)

expect("a compatible change tests compatible", client.test_compatibility(SUBJECT, Schema(V2, "AVRO")) is True)
expect("a breaking change tests incompatible", client.test_compatibility(SUBJECT, Schema(BREAKING, "AVRO")) is False)

v2_id = client.register_schema(SUBJECT, Schema(V2, "AVRO"))
latest = client.get_latest_version(SUBJECT)
expect("latest version is the second", latest.version == 2 and latest.schema_id == v2_id, latest)
expect("subjects are listed", SUBJECT in client.get_subjects())
expect("versions are listed", client.get_versions(SUBJECT) == [1, 2])
found = client.lookup_schema(SUBJECT, Schema(V1, "AVRO"))
expect("lookup finds version 1", found.version == 1 and found.schema_id == v1_id, found)

client.set_compatibility(SUBJECT, "FULL")
expect("subject compatibility is set", client.get_compatibility(SUBJECT) == "FULL")

try:
    client.register_schema(SUBJECT, Schema(BREAKING, "AVRO"))
    expect("an incompatible registration is refused", False)
except Exception as error:  # SchemaRegistryError
    expect("an incompatible registration is refused with 409", getattr(error, "http_status_code", None) == 409, error)

# Serialize with the registry's id, send through Kafka, read back and deserialize.
serializer = AvroSerializer(client, V2, conf={"auto.register.schemas": False, "use.latest.version": True})
deserializer = AvroDeserializer(client)
record = {"id": "trip-1", "nights": 3, "city": "Porto"}
context = SerializationContext(TOPIC, MessageField.VALUE)
payload = serializer(record, context)
expect("payload uses the Confluent wire format", payload[0] == 0 and int.from_bytes(payload[1:5], "big") == v2_id)

producer = Producer({"bootstrap.servers": BOOTSTRAP})
producer.produce(TOPIC, key=b"trip-1", value=payload)
expect("the broker acknowledged the record", producer.flush(10) == 0)

consumer = Consumer(
    {
        "bootstrap.servers": BOOTSTRAP,
        "group.id": "interop",
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
    }
)
consumer.subscribe([TOPIC])
message = None
for _ in range(60):
    message = consumer.poll(0.5)
    if message is not None and message.error() is None:
        break
consumer.close()
expect("the record came back from Kafka", message is not None and message.error() is None, message)
decoded = deserializer(message.value(), context)
expect("the record decodes to what was sent", decoded == record, decoded)

# An old-version payload decodes too (the reader gets the writer's schema by id).
old_serializer = AvroSerializer(client, V1, conf={"auto.register.schemas": False, "use.latest.version": False})
old_payload = old_serializer({"id": "trip-0", "nights": 1}, context)
expect("a version 1 payload names version 1's id", int.from_bytes(old_payload[1:5], "big") == v1_id)
expect("a version 1 payload decodes", deserializer(old_payload, context) == {"id": "trip-0", "nights": 1})

deleted = client.delete_subject(SUBJECT)
expect("soft delete returns the versions", deleted == [1, 2], deleted)
expect("a soft-deleted subject is not listed", SUBJECT not in client.get_subjects())

print(f"{passed} passed, 0 failed", flush=True)
