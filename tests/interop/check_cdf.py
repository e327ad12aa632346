#!/usr/bin/env python3
"""Reads a Delta table with Change Data Feed, written by lakets, with three independent
readers, and prints what each read as one JSON object (the Rust test compares it with
PostgreSQL):

- "feed": the `deltalake` package's DeltaTable.load_cdf from version 0, one entry per
  change: [version, change type, symbol, time in epoch microseconds, price text, volume];
- "duckdb": DuckDB's Delta extension, the current rows [symbol, time us, price, volume];
- "sail": Sail through the PySpark API (spark.read.format("delta")), the same current rows,
  and "sail_feed": Sail's change feed (readChangeFeed) as "feed", or the error it gave.

Usage: check_cdf.py DELTA_DIR [STARTING_VERSION]   (with a starting version: only "feed",
from that version on)
"""
import json
import sys

import pyarrow as pa

from sail_session import sail_session


def price_text(d):
    return None if d is None else format(d, "f")


def feed(table, starting_version=0):
    from deltalake import DeltaTable

    reader = DeltaTable(table).load_cdf(starting_version=starting_version)
    data = pa.RecordBatchReader.from_stream(reader).read_all()
    times = data.column("time").cast(pa.int64()).to_pylist()
    rows = []
    for i, row in enumerate(data.to_pylist()):
        rows.append([
            row["_commit_version"], row["_change_type"], row["symbol"], times[i],
            price_text(row["price"]), row["volume"],
        ])
    return sorted(rows, key=lambda r: [str(x) for x in r])


def duckdb_rows(table):
    import duckdb_delta

    con = duckdb_delta.connect()
    got = con.execute(
        f"SELECT symbol, epoch_us(time), price, volume FROM delta_scan('{table}') ORDER BY 1, 2"
    ).fetchall()
    return [[s, t, price_text(p), v] for s, t, p, v in got]


def sail(table):
    from pyspark.sql import functions as F

    with sail_session() as spark:
        df = spark.read.format("delta").load(table)
        current = [
            [r["symbol"], int(r["us"]), price_text(r["price"]), r["volume"]]
            for r in df.select(
                "symbol", F.unix_micros("time").alias("us"), "price", "volume"
            ).orderBy("symbol", "time").collect()
        ]
        try:
            changes = (
                spark.read.format("delta")
                .option("readChangeFeed", "true")
                .option("startingVersion", 0)
                .load(table)
            )
            sail_feed = sorted(
                (
                    [r["_commit_version"], r["_change_type"], r["symbol"], int(r["us"]),
                     price_text(r["price"]), r["volume"]]
                    for r in changes.select(
                        "_commit_version", "_change_type", "symbol",
                        F.unix_micros("time").alias("us"), "price", "volume",
                    ).collect()
                ),
                key=lambda r: [str(x) for x in r],
            )
        except Exception as e:  # Sail may not read change feeds: say what it answered
            sail_feed = f"error: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
        return current, sail_feed


def main():
    table = sys.argv[1]
    if len(sys.argv) > 2:
        print(json.dumps({"feed": feed(table, int(sys.argv[2]))}))
        return
    current, sail_feed = sail(table)
    print(json.dumps({
        "feed": feed(table),
        "duckdb": duckdb_rows(table),
        "sail": current,
        "sail_feed": sail_feed,
    }))


if __name__ == "__main__":
    main()
