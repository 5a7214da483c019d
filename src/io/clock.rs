//! Clocks. Coarse monotonic time in milliseconds, read once per batch by the loops that own
//! time; everything below takes `now` as a parameter. CLOCK_MONOTONIC_COARSE is served by the
//! vDSO (no syscall) and has jiffy resolution, plenty for second-scale timeouts. Wall-clock
//! nanoseconds stamp trace records.

/// Milliseconds on a wrapping 32-bit clock (wraps every 49.7 days; comparisons are wrapping).
pub fn now_ms() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts);
    }
    (ts.tv_sec as u64)
        .wrapping_mul(1000)
        .wrapping_add(ts.tv_nsec as u64 / 1_000_000) as u32
}

/// CLOCK_REALTIME in nanoseconds since the epoch (vDSO, no syscall).
pub fn realtime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}
