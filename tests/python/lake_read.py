"""Reads a Delta table an export wrote, with a reader no one here wrote, and prints one JSON
object: per edge, the rows, the sum of the value field `v` and the distinct (_partition,
_offset) pairs (equal to the rows when no record is in the table twice).

    lake_read.py deltalake|duckdb|spark TABLE_DIR
    lake_read.py deltalake s3://BUCKET/PREFIX ENDPOINT

deltalake reads the table through its transaction log (from a directory, or from an
S3-compatible store at ENDPOINT); DuckDB and Spark read the Parquet files of the table's
current version (the deltalake package lists them: files a crash left behind are not among
them) with the partition columns taken from their paths.
"""

import json
import os
import sys

from deltalake import DeltaTable


def tally(rows):
    out = {}
    for edge, count, total, distinct in rows:
        out[edge] = {"rows": int(count), "sum": int(total), "distinct": int(distinct)}
    return out


def with_deltalake(table, endpoint=None):
    import pyarrow.compute as pc

    options = None
    if endpoint:
        # moto takes any credentials; the appliance signed its writes with these too.
        options = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "lake-test",
            "AWS_SECRET_ACCESS_KEY": "lake-test-secret",
            "AWS_ALLOW_HTTP": "true",
        }
    data = DeltaTable(table, storage_options=options).to_pyarrow_table(
        columns=["_edge", "_partition", "_offset", "v"]
    )
    rows = []
    for edge in sorted(set(data.column("_edge").to_pylist())):
        part = data.filter(pc.equal(data.column("_edge"), edge))
        keys = set(zip(part.column("_partition").to_pylist(), part.column("_offset").to_pylist()))
        rows.append((edge, part.num_rows, pc.sum(part.column("v")).as_py() or 0, len(keys)))
    return tally(rows)


def with_duckdb(table):
    import duckdb

    files = DeltaTable(table).file_uris()
    connection = duckdb.connect()
    rows = connection.execute(
        "SELECT _edge, count(*), coalesce(sum(v), 0), count(DISTINCT (_partition, _offset)) "
        "FROM read_parquet(?, hive_partitioning = true) GROUP BY _edge",
        [files],
    ).fetchall()
    return tally(rows)


def with_spark(table):
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    files = DeltaTable(table).file_uris()
    spark = (
        SparkSession.builder.master("local[1]")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    frame = spark.read.option("basePath", table).parquet(*files)
    rows = (
        frame.groupBy("_edge")
        .agg(
            F.count(F.lit(1)),
            F.coalesce(F.sum("v"), F.lit(0)),
            F.countDistinct("_partition", "_offset"),
        )
        .collect()
    )
    spark.stop()
    return tally([tuple(row) for row in rows])


READERS = {"deltalake": with_deltalake, "duckdb": with_duckdb, "spark": with_spark}

if __name__ == "__main__":
    print(json.dumps(READERS[sys.argv[1]](*sys.argv[2:]), sort_keys=True), flush=True)
    # The deltalake package's runtime threads may still run while the interpreter finalises,
    # which now and then aborts the process ("terminate called without an active exception",
    # delta-io/delta-rs#2184): the answer is out, so leave without finalising.
    os._exit(0)
