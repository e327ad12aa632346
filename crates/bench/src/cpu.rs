//! CPU time of the processes a benchmark compares: this process (lakets' pipeline runs in
//! it), the children it waited for (`pg_recvlogical`), and a slot's walsender, read from
//! `/proc` while it runs.

use std::time::Duration;

use tokio::sync::watch;

/// User + system CPU of this process, or of its waited-for children.
fn rusage(who: libc::c_int) -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we own; it cannot fail for these
    // `who` values.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut usage) };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// CPU this process has used so far.
pub(crate) fn process() -> Duration {
    rusage(libc::RUSAGE_SELF)
}

/// CPU of the child processes that ended and were waited for.
pub(crate) fn children() -> Duration {
    rusage(libc::RUSAGE_CHILDREN)
}

/// User + system CPU of a running process (`/proc/<pid>/stat`), None once it is gone.
fn of_pid(pid: i32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_micros((utime + stime) * 1_000_000 / ticks))
}

/// How often the walsender's CPU is read: its last reading before it exits is at most this
/// old, so a drain of a few seconds loses about 1 % of it.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// Follows the walsender serving `slot` until `done` turns true, and returns the CPU it
/// used (the sum over walsenders, if a reconnect started another). Start following before
/// the consumer connects: each walsender's CPU is counted from its start.
pub(crate) async fn walsender(
    client: &tokio_postgres::Client,
    slot: &str,
    mut done: watch::Receiver<bool>,
) -> Duration {
    // Each walsender seen, with its latest reading.
    let mut seen: Vec<(i32, Duration)> = Vec::new();
    let mut current: Option<i32> = None;
    loop {
        // A dropped sender ends the run too.
        let finished = *done.borrow_and_update() || done.has_changed().is_err();
        let reading = current.and_then(|pid| of_pid(pid).map(|cpu| (pid, cpu)));
        match reading {
            Some((pid, cpu)) => match seen.iter_mut().find(|e| e.0 == pid) {
                Some(entry) => entry.1 = cpu,
                None => seen.push((pid, cpu)),
            },
            None if !finished => current = super::slot_walsender(client, slot).await.ok().flatten(),
            None => {}
        }
        if finished {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            _ = done.changed() => {}
        }
    }
    seen.iter().map(|(_, cpu)| *cpu).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_cpu_is_read_from_proc_and_getrusage_alike() {
        // Burn some CPU so that both readings are well above a clock tick.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let proc = of_pid(std::process::id() as i32).expect("our own stat");
        let rusage = process();
        assert!(proc >= Duration::from_millis(200), "{proc:?}");
        let diff = rusage.abs_diff(proc);
        assert!(diff < Duration::from_millis(100), "{rusage:?} vs {proc:?}");
        assert_eq!(of_pid(i32::MAX), None);
    }
}
