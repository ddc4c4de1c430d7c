//! File-descriptor limits, prepared once at start-up, before the runtime's threads exist.
//!
//! Two things make a busy broker stall otherwise: a soft `RLIMIT_NOFILE` below the hard one
//! (1024 on many systems) refuses connections long before `max_connections`, and growing the
//! kernel's file table in a multi-threaded process waits for an RCU grace period (10–20 ms,
//! every time the table doubles: at 256, 512, 1024, … descriptors). Raising the soft limit and
//! sizing the table once, while the process is still single-threaded, removes both.

/// Raises the soft open-file limit to the hard limit and grows the file table to hold `want`
/// descriptors (capped by the limit). Returns the soft limit now in force. Failures are
/// harmless (the broker works as before) and reported as `None`.
pub fn prepare(want: u64) -> Option<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    let top = want.min(lim.rlim_cur).saturating_sub(1);
    if let Ok(top) = libc::c_int::try_from(top)
        && top > 2
    {
        // Duplicating stderr to the highest descriptor we will need makes the kernel size the
        // table now; the duplicate is closed at once.
        // SAFETY: dup2 on our own stderr to an unused number, then close of that number.
        unsafe {
            if libc::fcntl(top, libc::F_GETFD) == -1 && libc::dup2(2, top) == top {
                libc::close(top);
            }
        }
    }
    Some(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    #[test]
    fn prepare_reports_a_limit() {
        let n = super::prepare(4096).expect("getrlimit works");
        assert!(n >= 256, "soft limit {n}");
    }
}
