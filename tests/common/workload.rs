//! The mixed workload of the tests that run everything at once: seeded, so that a failing
//! run replays. It writes `ticks (time, symbol, price, volume[, note])`, PRIMARY KEY
//! (symbol, time).

/// xorshift64*: deterministic per seed.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The table the workload writes, holding `rows` rows 10 s apart up to now over 6 symbols.
pub fn ticks_table_sql(rows: u32) -> String {
    shard_ticks_table_sql(rows, "")
}

/// [`ticks_table_sql`] for one shard of a table several clusters hold: its symbols start
/// with `shard`.
pub fn shard_ticks_table_sql(rows: u32, shard: &str) -> String {
    format!(
        "CREATE TABLE ticks (time timestamptz NOT NULL, symbol text NOT NULL,
                             price double precision, volume bigint, PRIMARY KEY (symbol, time));
         INSERT INTO ticks SELECT now() - i * interval '10 seconds', '{shard}S' || (i % 6), i % 100, i
           FROM generate_series(1, {rows}) i;"
    )
}

/// A writer of the workload on one session of `url` until `stop`, pausing up to
/// `max_pause_ms` between statements; a statement that fails (a key collision, a row
/// that moved away meanwhile) is rolled back. Returns how many statements it ran.
pub fn spawn_writer(
    url: String,
    rng: Rng,
    max_pause_ms: u64,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<u64> {
    spawn_shard_writer(url, rng, max_pause_ms, stop, "")
}

/// [`spawn_writer`] of one shard's symbols (those starting with `shard`).
pub fn spawn_shard_writer(
    url: String,
    mut rng: Rng,
    max_pause_ms: u64,
    stop: tokio_util::sync::CancellationToken,
    shard: &'static str,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let client = super::user_connect(&url).await;
        let (mut tick, mut statements) = (0i64, 0u64);
        while !stop.is_cancelled() {
            let sql = shard_statement(&mut rng, &mut tick, false, shard);
            statements += 1;
            if client.batch_execute(&sql).await.is_err() {
                let _ = client.batch_execute("ROLLBACK").await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(rng.below(max_pause_ms))).await;
        }
        statements
    })
}

/// One statement (or small transaction) of the workload. `tick` makes times unique.
pub fn statement(rng: &mut Rng, tick: &mut i64, noted: bool) -> String {
    shard_statement(rng, tick, noted, "")
}

/// [`statement`] on one shard's symbols (those starting with `shard`).
pub fn shard_statement(rng: &mut Rng, tick: &mut i64, noted: bool, shard: &str) -> String {
    *tick += 1;
    let t = *tick;
    let symbol = format!("{shard}S{}", rng.below(6));
    let note = |v: &str| {
        if noted {
            format!(", {v}")
        } else {
            String::new()
        }
    };
    let note_col = if noted { ", note" } else { "" };
    let pick = |rng: &mut Rng| {
        format!(
            "(SELECT symbol, time FROM ticks WHERE symbol = '{symbol}' AND time > now() - interval '100 minutes'
               ORDER BY time DESC OFFSET {} LIMIT 1)",
            rng.below(20)
        )
    };
    match rng.below(12) {
        0..=4 => format!(
            "INSERT INTO ticks (time, symbol, price, volume{note_col})
             SELECT now() + ({t} * 100 + g) * interval '1 microsecond', '{symbol}', {}, g{}
               FROM generate_series(1, {}) g",
            rng.below(500),
            note("'n'"),
            1 + rng.below(30)
        ),
        // A late row, into an older hot chunk (never one old enough to be dropped).
        5 => format!(
            "INSERT INTO ticks (time, symbol, price, volume{note_col})
             VALUES (now() - interval '{} minutes' + {t} * interval '1 microsecond', '{symbol}', 1.5, 1{})",
            1 + rng.below(90),
            note("'late'")
        ),
        // A correction in place.
        6 | 7 => format!(
            "UPDATE ticks SET price = price + 1 WHERE (symbol, time) IN {}",
            pick(rng)
        ),
        // The key moves: another symbol and another time (maybe another chunk).
        8 => format!(
            "UPDATE ticks SET symbol = '{shard}S{}', time = time - interval '{} minutes' + {t} * interval '1 microsecond'
              WHERE (symbol, time) IN {}",
            rng.below(6),
            rng.below(60),
            pick(rng)
        ),
        9 | 10 => format!("DELETE FROM ticks WHERE (symbol, time) IN {}", pick(rng)),
        // A transaction that inserts, corrects and deletes its own rows.
        _ => format!(
            "BEGIN;
             INSERT INTO ticks (time, symbol, price, volume) VALUES
               (now() + {t} * interval '1 microsecond', '{shard}T', 1, 1),
               (now() + ({t} + 1) * interval '1 microsecond', '{shard}U', 2, 2);
             UPDATE ticks SET price = 3 WHERE symbol = '{shard}T' AND time = now() + {t} * interval '1 microsecond';
             DELETE FROM ticks WHERE symbol = '{shard}U' AND time = now() + ({t} + 1) * interval '1 microsecond';
             COMMIT;"
        ),
    }
}

/// The run's seed: the number in the environment variable `replay` (to replay a run),
/// else the clock.
pub fn seed(replay: &str) -> u64 {
    std::env::var(replay)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}
