"""confluent-kafka (librdkafka, from PyPI) against the Kafka listener, one action per run,
printing one JSON object:

  produce: COUNT records to TOPIC with each codec of CODECS (a producer per codec), keys
           "<codec>-<n>", values "<codec> record <n>", a header "codec"; prints
           {"errors": [delivery error names]}.
  consume: reads TOPIC in group GROUP until it has COUNT records (or TIMEOUT seconds), commits
           synchronously, closes; prints {"records": [[key, value], ...], "error": name|null}.
  admin:   grows TOPIC to PARTITIONS partitions and describes its settings with the
           AdminClient; prints {"partitions": N, "configs": {name: value}}.

Usage: confluent_client.py ACTION '{"bootstrap": ..., "mechanism": ..., "user": ...,
                                   "password": ..., "topic": ..., ...}'
"""

import json
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions


def settings(options: dict) -> dict:
    return {
        "bootstrap.servers": options["bootstrap"],
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": options["mechanism"],
        "sasl.username": options["user"],
        "sasl.password": options["password"],
    }


def produce(options: dict) -> dict:
    errors = []

    def delivered(error, _message):
        if error is not None:
            errors.append(error.name())

    for codec in options["codecs"]:
        producer = Producer({**settings(options), "compression.type": codec, "acks": "all"})
        for n in range(options["count"]):
            producer.produce(
                options["topic"],
                key=f"{codec}-{n}",
                value=f"{codec} record {n}",
                headers=[("codec", codec.encode())],
                on_delivery=delivered,
            )
        remaining = producer.flush(30)
        if remaining:
            errors.append(f"{remaining} undelivered")
    return {"errors": errors}


def consume(options: dict) -> dict:
    consumer = Consumer(
        {
            **settings(options),
            "group.id": options["group"],
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([options["topic"]])
    records, error = [], None
    deadline = time.monotonic() + options.get("timeout", 60)
    while len(records) < options["count"] and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None:
            continue
        if message.error():
            error = message.error().name()
            if message.error().fatal() or not message.error().retriable():
                break
            continue
        records.append([message.key().decode(), message.value().decode()])
    if records:
        try:
            consumer.commit(asynchronous=False)
        except KafkaException as failed:
            error = failed.args[0].name()
    consumer.close()
    return {"records": records, "error": error}


def admin(options: dict) -> dict:
    client = AdminClient(settings(options))
    topic = options["topic"]
    grown = client.create_partitions([NewPartitions(topic, options["partitions"])])
    grown[topic].result(30)
    metadata = client.list_topics(topic, timeout=30)
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = client.describe_configs([resource])[resource].result(30)
    return {
        "partitions": len(metadata.topics[topic].partitions),
        "configs": {name: entry.value for name, entry in configs.items()},
    }


def main() -> None:
    action, options = sys.argv[1], json.loads(sys.argv[2])
    actions = {"produce": produce, "consume": consume, "admin": admin}
    print(json.dumps(actions[action](options)))


if __name__ == "__main__":
    main()
