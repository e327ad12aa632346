"""Reads a Delta table through Sail (pysail's Spark Connect server) with the PySpark API
and prints, per value of lakets_source, the rows, the sum of `volume` and the distinct
(symbol, time) keys as JSON: {"a": {"rows": .., "volume": .., "keys": ..}, ...}.

Usage: python sail_union.py <table directory>
"""

import json
import sys

from sail_session import sail_session
from pyspark.sql import functions as F


def main() -> None:
    path = sys.argv[1]
    with sail_session() as spark:
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


if __name__ == "__main__":
    main()
