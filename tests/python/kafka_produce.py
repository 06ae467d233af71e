"""Produces COUNT records to TOPIC with kafka-python's defaults (3.x: the idempotent producer,
acks=all) over SASL, and prints {"offsets": [[partition, offset], ...]} as JSON.

Usage: kafka_produce.py '{"bootstrap": ..., "mechanism": ..., "user": ..., "password": ...,
                          "topic": ..., "count": N}'
"""

import json
import sys

from kafka import KafkaProducer


def main() -> None:
    options = json.loads(sys.argv[1])
    producer = KafkaProducer(
        bootstrap_servers=options["bootstrap"],
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism=options["mechanism"],
        sasl_plain_username=options["user"],
        sasl_plain_password=options["password"],
        compression_type=options.get("compression"),
    )
    futures = [
        producer.send(options["topic"], key=b"k%d" % (n % 5), value=b"record %d" % n)
        for n in range(options["count"])
    ]
    producer.flush()
    offsets = [[f.get(timeout=30).partition, f.get(timeout=30).offset] for f in futures]
    producer.close()
    print(json.dumps({"offsets": offsets, "idempotent": producer.config["enable_idempotence"]}))


if __name__ == "__main__":
    main()
