//! PostgreSQL's own logical replication client, `pg_recvlogical`, writing to /dev/null: the
//! consumer that does nothing with the changes, so the baseline every lakets figure of the
//! same WAL is set against.

use std::process::Stdio;

use lakets_testkit::embedded::{EmbeddedPostgres, SUPERUSER};

/// `pg_recvlogical --start` on `slot` through pgoutput (protocol 1, `publication`, messages
/// on, binary when asked: the options lakets streams with), connected to `host` (an
/// address, or the directory of the Unix socket). The password comes from the cluster's
/// pgpass file, never the command line.
pub(crate) fn command(
    pg: &EmbeddedPostgres,
    host: &str,
    slot: &str,
    publication: &str,
    binary: bool,
) -> tokio::process::Command {
    let conninfo = format!(
        "host={host} port={} dbname=lakets_bench user={SUPERUSER}",
        pg.port()
    );
    let mut cmd = tokio::process::Command::new(pg.bindir().join("pg_recvlogical"));
    cmd.env("PGPASSFILE", pg.pgpass_file());
    cmd.args([
        "-d",
        &conninfo,
        "--slot",
        slot,
        "--start",
        "--no-loop",
        "-f",
        "/dev/null",
        "-o",
        "proto_version=1",
        "-o",
        &format!("publication_names={publication}"),
        "-o",
        "messages=true",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    if binary {
        cmd.args(["-o", "binary=true"]);
    }
    cmd
}
