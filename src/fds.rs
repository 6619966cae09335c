//! File descriptors: the process limit and the kernel's descriptor table,
//! both set up once, before the runtime starts any thread.
//!
//! Linux grows a process's descriptor table by doubling it (64, 128, 256,
//! …). When the process has more than one thread, the `socket()` or
//! `accept()` that crosses a power of two also waits for an RCU grace
//! period before it returns. On the benchmark machine (a 2-core VM) that
//! wait was 15–20 ms, and every connection served by that runtime thread
//! stalled with it: in the SSE benchmark the first events of 64 streams
//! arrived 19 ms late, together, when a new upstream socket took
//! descriptor 256. Grown here, while veilgate is still single-threaded,
//! the table never has to grow under load.

/// What [`prepare`] found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prepared {
    /// The soft `RLIMIT_NOFILE` before and after (`None`: unlimited).
    pub limit_before: Option<u64>,
    pub limit_after: Option<u64>,
    /// Descriptors the table holds without growing again.
    pub table: u64,
}

/// Raises the soft descriptor limit to the hard one (a server configured
/// for thousands of connections must not stop at a login shell's 1024) and
/// grows the descriptor table to hold `wanted` descriptors, or as many as
/// the limit allows. Failures leave things as they were: the server still
/// runs, it only may grow its table later.
///
/// Call it before any thread is started.
#[cfg(unix)]
pub fn prepare(wanted: u64) -> Prepared {
    use rustix::process::{Resource, getrlimit, setrlimit};

    /// The kernel refuses a descriptor limit above `fs.nr_open`
    /// (1,048,576 unless raised), so "unlimited" means this.
    const NR_OPEN_DEFAULT: u64 = 1 << 20;

    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(NR_OPEN_DEFAULT);
    let before = limit.current;
    let after = match before {
        Some(soft) if soft < hard => {
            let raised = rustix::process::Rlimit { current: Some(hard), maximum: limit.maximum };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => Some(hard),
                Err(_) => before,
            }
        }
        _ => before,
    };
    let cap = after.unwrap_or(NR_OPEN_DEFAULT);
    let top = wanted.min(cap).saturating_sub(1);
    // Duplicating onto the highest descriptor wanted makes the kernel size
    // the table for it at once; the duplicate is closed right away.
    let table = std::fs::File::open("/dev/null")
        .ok()
        .and_then(|null| rustix::io::fcntl_dupfd_cloexec(&null, i32::try_from(top).ok()?).ok())
        .map_or(0, |_dup| top + 1);
    Prepared { limit_before: before, limit_after: after, table }
}

#[cfg(not(unix))]
pub fn prepare(_wanted: u64) -> Prepared {
    Prepared { limit_before: None, limit_after: None, table: 0 }
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests {
    use super::*;

    /// How many descriptors the kernel's table holds now (`FDSize`).
    fn table_size() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status.lines().find_map(|l| l.strip_prefix("FDSize:")).unwrap().trim().parse().unwrap()
    }

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    #[test]
    fn grows_the_table_without_keeping_descriptors() {
        let open = open_fds();
        let wanted = (table_size() * 4)
            .min(rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum.unwrap_or(1 << 20));
        let prepared = prepare(wanted);
        assert_eq!(prepared.table, wanted, "{prepared:?}");
        assert!(table_size() >= wanted, "the table holds {} descriptors, {wanted} wanted", table_size());
        assert!(prepared.limit_after.is_none() || prepared.limit_after >= prepared.limit_before);
        assert!(open_fds() <= open, "the descriptor that grew the table was not closed");
    }
}
