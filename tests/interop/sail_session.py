"""A Spark session on Sail (pysail's Spark Connect server, in this process), in UTC, for
the interop scripts: `with sail_session() as spark: ...`."""

import contextlib
import os

# remote() refuses to start beside a configured master.
for var in ("SPARK_REMOTE", "MASTER"):
    os.environ.pop(var, None)


@contextlib.contextmanager
def sail_session():
    from pysail.spark import SparkConnectServer
    from pyspark.sql import SparkSession

    server = SparkConnectServer("127.0.0.1", 0)
    server.start(background=True)
    host, port = server.listening_address
    spark = SparkSession.builder.remote(f"sc://{host}:{port}").getOrCreate()
    try:
        spark.conf.set("spark.sql.session.timeZone", "UTC")
        yield spark
    finally:
        spark.stop()
        server.stop()
