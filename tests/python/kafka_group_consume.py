"""One member of a Kafka consumer group (kafka-python's KafkaConsumer with group_id): polls
TOPIC, commits each batch synchronously, and only then appends the batch's records to OUT as
JSON lines [partition, offset, value], so that OUT holds exactly what this member consumed
and committed. A batch whose commit fails (the group rebalanced under it) is delivered again,
to the partition's next owner or to this member. Runs until the file STOP exists, then
closes (leaving the group).

Usage: kafka_group_consume.py '{"bootstrap": ..., "mechanism": ..., "user": ...,
                                "password": ..., "topic": ..., "group": ..., "out": ...,
                                "stop": ...}'
"""

import json
import os
import sys

from kafka import KafkaConsumer
from kafka.errors import CommitFailedError


def main() -> None:
    options = json.loads(sys.argv[1])
    consumer = KafkaConsumer(
        options["topic"],
        group_id=options["group"],
        bootstrap_servers=options["bootstrap"],
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism=options["mechanism"],
        sasl_plain_username=options["user"],
        sasl_plain_password=options["password"],
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=10000,
        heartbeat_interval_ms=500,
        max_poll_records=40,
    )
    with open(options["out"], "a", encoding="utf-8") as out:
        while not os.path.exists(options["stop"]):
            batches = consumer.poll(timeout_ms=200)
            if not batches:
                continue
            try:
                consumer.commit()
            except CommitFailedError:
                # The member may keep a partition through the rebalance, and with it its
                # position: move back so that the batch is delivered again.
                for partition, records in batches.items():
                    if partition in consumer.assignment():
                        consumer.seek(partition, records[0].offset)
                continue
            for records in batches.values():
                for record in records:
                    out.write(json.dumps([record.partition, record.offset, record.value.decode()]) + "\n")
            out.flush()
    consumer.close()


if __name__ == "__main__":
    main()
