#!/usr/bin/env python3
"""Reads a Delta table written by lakets with DuckDB's Delta extension (an independent
reader) and checks it against what PostgreSQL and lakets reported (expected.json):
row count, sums, per-partition counts, exact microsecond timestamps, per-version counts,
and the statistics logged for every file.

Usage: check_delta.py DELTA_DIR EXPECTED_JSON   (exit 0 and "all checks passed" when equal)
"""
import datetime
import decimal
import glob
import json
import os
import sys

import duckdb_delta

failures = []


def check(what, got, want):
    if got != want:
        failures.append(f"{what}: DuckDB read {got!r}, expected {want!r}")
    else:
        print(f"ok   {what}")


def micros(text):
    """A Delta statistics timestamp (ISO 8601, UTC) as microseconds since the epoch."""
    dt = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    delta = dt - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def main():
    table, expected_path = sys.argv[1], sys.argv[2]
    expected = json.load(open(expected_path))
    con = duckdb_delta.connect()
    scan = f"delta_scan('{table}')"
    part = expected["partition_column"]

    count, sum_volume, sum_price = con.execute(
        f"SELECT count(*), sum(volume), sum(price) FROM {scan}").fetchone()
    check("row count", count, expected["count"])
    check("sum(volume)", int(sum_volume), expected["sum_volume"])
    check("sum(price) (exact decimal)", decimal.Decimal(sum_price), decimal.Decimal(expected["sum_price"]))

    per_day = con.execute(
        f"SELECT strftime({part}, '%Y-%m-%d'), count(*) FROM {scan} GROUP BY 1 ORDER BY 1").fetchall()
    check("per-partition counts", [list(r) for r in per_day], expected["per_day"])
    misplaced = con.execute(
        f"SELECT count(*) FROM {scan} WHERE {part} <> DATE '1970-01-01' + CAST(floor(epoch_us(time) / 86400000000) AS INTEGER)"
    ).fetchone()[0]
    check("rows in the partition of their UTC day", misplaced, 0)

    times = con.execute(f"SELECT symbol, epoch_us(time) FROM {scan} ORDER BY 1, 2").fetchall()
    check("exact microsecond timestamps (per symbol)", [list(r) for r in times], expected["times"])

    for version, want in expected["versions"]:
        got = con.execute(f"SELECT count(*) FROM delta_scan('{table}', version => {version})").fetchone()[0]
        check(f"row count at version {version}", got, want)

    # Every file's logged statistics against the file itself.
    files = 0
    for log in sorted(glob.glob(os.path.join(table, "_delta_log", "*.json"))):
        for line in open(log):
            action = json.loads(line)
            add = action.get("add")
            if not add or not add.get("stats"):
                continue
            files += 1
            stats = json.loads(add["stats"])
            path = os.path.join(table, add["path"])
            n, vmin, vmax, tmin, tmax, vnull = con.execute(
                f"SELECT count(*), min(volume), max(volume), min(epoch_us(time)), max(epoch_us(time)), "
                f"count(*) - count(volume) FROM read_parquet('{path}')").fetchone()
            name = os.path.basename(add["path"])
            if stats["numRecords"] != n:
                failures.append(f"{name}: numRecords {stats['numRecords']} but the file has {n} rows")
            if n and (stats["minValues"].get("volume") != vmin or stats["maxValues"].get("volume") != vmax):
                failures.append(f"{name}: volume stats {stats['minValues'].get('volume')}..{stats['maxValues'].get('volume')} vs {vmin}..{vmax}")
            if stats["nullCount"].get("volume") != vnull:
                failures.append(f"{name}: volume nullCount {stats['nullCount'].get('volume')} vs {vnull}")
            if n:
                smin, smax = micros(stats["minValues"]["time"]), micros(stats["maxValues"]["time"])
                # Timestamp statistics may be truncated to milliseconds.
                if not (0 <= tmin - smin < 1000 and 0 <= tmax - smax < 1000 or smin == tmin and smax == tmax):
                    failures.append(f"{name}: time stats {smin}..{smax} vs {tmin}..{tmax}")
            if part not in add.get("partitionValues", {}):
                failures.append(f"{name}: no partition value for {part}")
    check("files with statistics checked > 0", files > 0, True)

    if failures:
        print("\n".join("FAIL " + f for f in failures))
        sys.exit(1)
    print(f"all checks passed ({count} rows, {files} files, {len(expected['versions'])} versions)")


if __name__ == "__main__":
    main()
