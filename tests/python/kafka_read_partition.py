"""Reads one partition from its beginning to its end with kafka-python's KafkaConsumer
(assigned, no group) and prints one JSON line [offset, key, value] per record (null for an
absent key or value).

Usage: kafka_read_partition.py '{"bootstrap": ..., "mechanism": ..., "user": ...,
                                 "password": ..., "topic": ..., "partition": ...}'
"""

import json
import sys

from kafka import KafkaConsumer, TopicPartition


def text(data):
    return None if data is None else data.decode()


def main() -> None:
    options = json.loads(sys.argv[1])
    consumer = KafkaConsumer(
        bootstrap_servers=options["bootstrap"],
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism=options["mechanism"],
        sasl_plain_username=options["user"],
        sasl_plain_password=options["password"],
        enable_auto_commit=False,
    )
    partition = TopicPartition(options["topic"], options["partition"])
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    end = consumer.end_offsets([partition])[partition]
    while consumer.position(partition) < end:
        for records in consumer.poll(timeout_ms=1000).values():
            for record in records:
                print(json.dumps([record.offset, text(record.key), text(record.value)]))
    consumer.close()


if __name__ == "__main__":
    main()
