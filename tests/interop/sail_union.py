"""Reads a Delta table through Sail (pysail's Spark Connect server) with the PySpark API
and prints, per value of lakets_source, the rows, the sum of `volume` and the distinct
(symbol, time) keys as JSON: {"a": {"rows": .., "volume": .., "keys": ..}, ...}.

Usage: python sail_union.py <table directory>
"""

import json
import os
import sys

# remote() refuses to start beside a configured master.
for var in ("SPARK_REMOTE", "MASTER"):
    os.environ.pop(var, None)

from pysail.spark import SparkConnectServer
from pyspark.sql import SparkSession
from pyspark.sql import functions as F


def main() -> None:
    path = sys.argv[1]
    server = SparkConnectServer("127.0.0.1", 0)
    server.start(background=True)
    host, port = server.listening_address
    spark = SparkSession.builder.remote(f"sc://{host}:{port}").getOrCreate()
    try:
        spark.conf.set("spark.sql.session.timeZone", "UTC")
        df = spark.read.format("delta").load(path)
        rows = (
            df.groupBy("lakets_source")
            .agg(
                F.count(F.lit(1)).alias("rows"),
                F.sum("volume").alias("volume"),
                F.countDistinct("symbol", "time").alias("keys"),
            )
            .collect()
        )
        out = {
            r["lakets_source"]: {
                "rows": int(r["rows"]),
                "volume": int(r["volume"] or 0),
                "keys": int(r["keys"]),
            }
            for r in rows
        }
        print(json.dumps(out))
    finally:
        spark.stop()
        server.stop()


if __name__ == "__main__":
    main()
