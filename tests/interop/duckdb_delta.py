"""A DuckDB connection with the Delta extension of the duckdb-extension-delta package
loaded, for the interop scripts."""

import glob
import os
import sys

import duckdb
import duckdb_extension_delta


def connect():
    ext_dir = os.path.join(os.path.dirname(duckdb_extension_delta.__file__), "extensions")
    ext = glob.glob(os.path.join(ext_dir, f"v{duckdb.__version__}", "delta.duckdb_extension"))
    if not ext:
        sys.exit(f"no delta extension for duckdb {duckdb.__version__} under {ext_dir}")
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    con.execute(f"LOAD '{ext[0]}'")
    return con
