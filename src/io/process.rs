//! Signals to processes uvs started, and a look at whether one has exited. Callers own the
//! PIDs they pass: a child not yet reaped (its PID, and the group id of a child started with
//! `setsid`/`process_group(0)`, cannot be recycled), or a recorded PID whose start time they
//! checked.

/// Sends `sig` to the process group `pgid` (`kill(-pgid, sig)`). PIDs 0 and 1 and values
/// beyond `pid_t` are ignored: they would name every process or init. Returns whether the
/// group existed (the signal was delivered).
pub fn signal_group(pgid: u32, sig: libc::c_int) -> bool {
    match ordinary(pgid) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        Some(p) => unsafe { libc::kill(-p, sig) == 0 },
        None => false,
    }
}

/// Sends `sig` to the process `pid`; PIDs 0 and 1 are ignored.
pub fn signal(pid: u32, sig: libc::c_int) {
    if let Some(p) = ordinary(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(p, sig) };
    }
}

fn ordinary(pid: u32) -> Option<libc::pid_t> {
    libc::pid_t::try_from(pid).ok().filter(|&p| p > 1)
}

/// Has child `pid` exited? Checked without reaping it (`WNOWAIT`), so its PID and group id
/// stay reserved until the caller waits for it. A child someone else reaped counts as exited.
pub fn exited_without_reaping(pid: u32) -> bool {
    // SAFETY: an all-zero siginfo_t is a valid value; waitid only writes into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable siginfo_t; WNOWAIT leaves the child waitable.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if r != 0 {
        return true;
    }
    // SAFETY: waitid succeeded, so `info` holds a SIGCHLD record (or zeroes if none ready).
    unsafe { info.si_pid() != 0 }
}
