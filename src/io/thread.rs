//! Per-thread scheduling knobs.

/// Sets the calling thread's timer slack (`PR_SET_TIMERSLACK`): how late the kernel may fire
/// its timers to batch wake-ups (default 50 µs).
pub fn set_timer_slack_ns(ns: u64) {
    // SAFETY: PR_SET_TIMERSLACK takes an integer and affects only the calling thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0) };
}
