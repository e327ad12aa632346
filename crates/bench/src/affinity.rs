//! CPU pinning for the write path's split-core runs: the writers' backends on one core,
//! the walsender and this process on the other, as on a machine where decoding has cores
//! of its own. Linux's `sched_setaffinity`: a process may pin its own threads and the
//! embedded PostgreSQL's processes (same user, or root).

use crate::error::{Error, Result};

/// A set of CPUs.
#[derive(Clone)]
pub(crate) struct CpuSet(libc::cpu_set_t);

impl CpuSet {
    pub(crate) fn of(cpus: &[usize]) -> Self {
        // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &cpu in cpus {
            // SAFETY: CPU_SET bounds-checks against the set's size.
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
        CpuSet(set)
    }

    /// The CPUs this process may run on now.
    pub(crate) fn current() -> Result<Self> {
        // SAFETY: as above.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: the pointer and size describe `set`.
        let rc =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        if rc != 0 {
            return Err(os_error("reading this process's CPU affinity"));
        }
        Ok(CpuSet(set))
    }

    /// The `n`-th CPU of the set.
    pub(crate) fn nth(&self, n: usize) -> Option<usize> {
        // SAFETY: CPU_ISSET bounds-checks against the set's size.
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &self.0) })
            .nth(n)
    }

    /// Pins one process or thread (a PostgreSQL backend is a process of one thread).
    pub(crate) fn pin(&self, pid: i32) -> Result<()> {
        // SAFETY: the pointer and size describe our set.
        let rc = unsafe {
            libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &self.0)
        };
        if rc != 0 {
            return Err(os_error(&format!("pinning process {pid} to CPUs")));
        }
        Ok(())
    }

    /// Pins every thread of this process (threads started later inherit it from theirs).
    pub(crate) fn pin_this_process(&self) -> Result<()> {
        let tasks = std::fs::read_dir("/proc/self/task")
            .map_err(|e| Error::Operator(format!("listing this process's threads: {e}")))?;
        for task in tasks.flatten() {
            if let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) {
                // A thread may end between the listing and the call.
                match self.pin(tid) {
                    Err(_) if !task.path().exists() => {}
                    other => other?,
                }
            }
        }
        Ok(())
    }
}

fn os_error(what: &str) -> Error {
    Error::Operator(format!("{what}: {}", std::io::Error::last_os_error()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_knows_its_cpus() {
        let set = CpuSet::of(&[0, 3]);
        assert_eq!(set.nth(0), Some(0));
        assert_eq!(set.nth(1), Some(3));
        assert_eq!(set.nth(2), None);
        let now = CpuSet::current().unwrap();
        assert!(now.nth(0).is_some());
        // Re-pinning this process to what it has changes nothing and must work.
        now.pin_this_process().unwrap();
    }
}
