//! Two `lakets run` of one config against one database: one streams and runs the jobs,
//! the other stands by and says so (`/readyz`, `lakets status`). Ten times the active one
//! is SIGKILLed: the standby streams within 10 s and the killed one comes back as the
//! standby. Then the active one is frozen (SIGSTOP) past its lease: the standby takes
//! over and ends its sessions, and when the frozen one resumes (SIGCONT) it notices, stops
//! its work unflushed and stands by. A mixed workload runs throughout. Afterwards
//! `verify` passes for Delta and the LVC, and the Delta table holds no duplicate key.
//! Prints the takeover times (p50, max).
//!
//! Its own binary: it kills and freezes the processes it starts.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::wal::{lsn_now, wait_until_confirmed};
use common::workload::Rng;
use common::{Service, TestDb};
use lakets::delta::schema::{Cell, Partitioning};

/// Waits until the instance on `port` answers `/readyz` as `want` says; the time it took.
async fn until(port: u16, what: &str, want: impl Fn(u16, &str) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let (code, body) = common::http_get(port, "/readyz").await;
        if want(code, &body) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "instance on port {port} is not {what} after 30 s: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn streaming(port: u16) -> Duration {
    until(port, "streaming", |code, _| code == 200).await
}

async fn standing_by(port: u16) -> Duration {
    until(port, "standing by", |code, body| {
        code == 503 && body.contains("standing by")
    })
    .await
}

struct Instance {
    port: u16,
    log: std::path::PathBuf,
    process: Option<Service>,
}

impl Instance {
    fn spawn(&mut self, db: &TestDb, config: &std::path::Path) {
        self.process = Some(common::spawn_service_with(
            db,
            config,
            &self.log,
            "warn,lakets=info",
            &[("LAKETS_HTTP_LISTEN", format!("127.0.0.1:{}", self.port))],
        ));
    }

    fn pid(&self) -> i32 {
        self.process.as_ref().unwrap().0.id() as i32
    }
}

/// `lakets status --json` of the config: (instance, role) of each instance listed.
fn status_instances(db: &TestDb, config: &std::path::Path) -> Vec<(String, String)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lakets"))
        .args(["status", "--json", "--config"])
        .arg(config)
        .env_remove("DATABASE_URL")
        .env("LAKETS_DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lakets status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    status["instances"]
        .as_array()
        .expect("instances in lakets status")
        .iter()
        .map(|i| {
            (
                i["instance"].as_str().unwrap().to_string(),
                i["role"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_exactly_once_and_a_deposed_leader_stands_down() {
    let takeovers: usize = std::env::var("LAKETS_TAKEOVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut db = common::fresh_db("standby").await;
    common::workload_chronotable(&mut db, 1000).await;
    let dir = tempfile::tempdir().unwrap();
    let sync = common::sync_to(&db, "ticks", dir.path().join("delta").to_str().unwrap()).await;
    lakets::lvc::enable_lvc(
        &mut db.client,
        "ticks",
        &["symbol".into()],
        &["price".into(), "volume".into()],
    )
    .await
    .unwrap();
    let config = dir.path().join("lakets.toml");
    std::fs::write(
        &config,
        r#"
[service]
flush_interval = "200 milliseconds"
leader_lease = "3 seconds"
[grpc]
listen = "off"
[jobs]
partitions_every = "2 seconds"
rollups_every = "2 seconds"
maintenance_every = "2 seconds"
[[tables]]
name = "ticks"
time_column = "time"
chunk_interval = "1 hour"
premake = 2
"#,
    )
    .unwrap();

    let mut instances = [0, 1].map(|i| Instance {
        port: common::free_port(),
        log: dir.path().join(format!("lakets-{i}.log")),
        process: None,
    });
    instances[0].spawn(&db, &config);
    streaming(instances[0].port).await;
    instances[1].spawn(&db, &config);
    standing_by(instances[1].port).await;
    let listed = status_instances(&db, &config);
    let roles: Vec<&str> = listed.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(roles, ["active", "standby"], "lakets status: {listed:?}");

    let stop = tokio_util::sync::CancellationToken::new();
    let seed = common::workload::seed("LAKETS_STANDBY_SEED");
    eprintln!("standby seed {seed} (LAKETS_STANDBY_SEED to replay)");
    let writer = common::workload::spawn_writer(db.url.clone(), Rng(seed | 1), 10, stop.clone());

    // Takeovers after SIGKILL of the active instance.
    let mut active = 0;
    let mut times = Vec::new();
    for round in 0..takeovers {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let standby = 1 - active;
        instances[active].process.as_mut().unwrap().kill();
        let took = streaming(instances[standby].port).await;
        eprintln!("takeover {round}: {:.2} s", took.as_secs_f64());
        assert!(
            took < Duration::from_secs(10),
            "takeover {round} took {took:?}"
        );
        times.push(took);
        instances[active].spawn(&db, &config);
        standing_by(instances[active].port).await;
        active = standby;
    }

    // A leader frozen past its lease: the standby takes over; resumed, it stands down.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (frozen, other) = (active, 1 - active);
    let (frozen_pid, other_pid) = (instances[frozen].pid(), instances[other].pid());
    let frozen_at = chrono::Utc::now().timestamp_millis();
    unsafe {
        libc::kill(instances[frozen].pid(), libc::SIGSTOP);
    }
    let took = streaming(instances[other].port).await;
    eprintln!("takeover from a frozen leader: {:.2} s", took.as_secs_f64());
    assert!(took < Duration::from_secs(10), "took {took:?}");
    tokio::time::sleep(Duration::from_secs(3)).await; // the new leader commits meanwhile
    unsafe {
        libc::kill(instances[frozen].pid(), libc::SIGCONT);
    }
    standing_by(instances[frozen].port).await;
    let (_, scrape) = common::http_get(instances[frozen].port, "/metrics").await;
    assert!(
        common::metric_sum(&scrape, "lakets_leader_depositions_total", &[]) >= 1.0,
        "the resumed instance counted its deposition"
    );
    let frozen_log = std::fs::read_to_string(&instances[frozen].log).unwrap();
    assert!(
        frozen_log.contains("stopping the work unflushed"),
        "the resumed instance says it stood down"
    );
    let other_log = std::fs::read_to_string(&instances[other].log).unwrap();
    assert!(
        other_log.contains("ended the sessions of the instance that led before"),
        "the new leader fenced the frozen one"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The final catch-up by the leader, then a clean stop of both.
    stop.cancel();
    let statements = writer.await.unwrap();
    assert!(
        statements > 300,
        "the workload ran: {statements} statements"
    );
    let slot = lakets::wal::slot::default_slot_name(&db.name);
    let end = lsn_now(&db).await;
    wait_until_confirmed(&db.client, &slot, end, Duration::from_secs(60)).await;
    for i in [frozen, other] {
        let exit = instances[i].process.as_mut().unwrap().stop();
        assert!(exit.success(), "instance {i} stopped cleanly: {exit:?}");
    }
    let report = lakets::verify::verify(&db.client, "ticks").await.unwrap();
    if !report.ok {
        let _ = dir.keep();
    }
    assert!(report.ok, "verify: {:?}", report.differences);
    assert_eq!(report.lvc_differences, Some(0), "{report:?}");
    let delta = lakets::delta::table::open(&sync.location)
        .await
        .unwrap()
        .unwrap();
    let shape = lakets::delta::mirror::shape_of(&delta, "time", Partitioning::Day).unwrap();
    let rows = lakets::delta::read::scan(&delta, &shape).await.unwrap();
    let keys: HashSet<(Cell, Cell)> = rows.iter().map(|r| (r[0].clone(), r[1].clone())).collect();
    assert_eq!(keys.len(), rows.len(), "duplicate keys in Delta");
    // Fenced: once its successor committed, the leader frozen past its lease committed
    // nothing more (each commit names the process that made it).
    let by = |pid: i32| {
        move |writer: &Option<String>| {
            writer
                .as_deref()
                .is_some_and(|w| w.contains(&format!(":{pid}:")))
        }
    };
    let commits = common::delta_commit_writers(&sync.location).await;
    let successor_first = commits
        .iter()
        .find(|(_, at, w)| *at >= frozen_at && by(other_pid)(w))
        .map(|(v, _, _)| *v)
        .expect("the new leader committed after the takeover");
    let stale: Vec<_> = commits
        .iter()
        .filter(|(v, _, w)| *v > successor_first && by(frozen_pid)(w))
        .collect();
    assert!(
        stale.is_empty(),
        "the deposed leader committed after its successor: {stale:?}"
    );
    assert!(
        commits.iter().any(|(_, _, w)| by(frozen_pid)(w)),
        "commits name their writer"
    );

    times.sort();
    let p50 = times[times.len() / 2];
    let max = times[times.len() - 1];
    eprintln!(
        "takeovers after SIGKILL: {} runs, p50 {:.2} s, max {:.2} s; from a frozen leader {:.2} s; {statements} statements, {} rows in Delta",
        times.len(),
        p50.as_secs_f64(),
        max.as_secs_f64(),
        took.as_secs_f64(),
        rows.len()
    );
}
