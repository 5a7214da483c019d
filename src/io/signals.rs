//! Process signals, turned into flags the loops poll: SIGINT/SIGTERM request a clean stop,
//! SIGHUP a configuration reload. SIGPIPE is ignored (a scraper that hangs up must not kill
//! the director).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);
/// Stop signals received: a second one cuts a graceful stop's drain short.
static STOPS: AtomicU32 = AtomicU32::new(0);
static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
    STOPS.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn on_reload(_: libc::c_int) {
    RELOAD.store(true, Ordering::SeqCst);
}

pub fn install() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe; the
    // sigaction struct is fully initialised before use.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_stop as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
        let mut hup: libc::sigaction = std::mem::zeroed();
        hup.sa_sigaction = on_reload as *const () as usize;
        libc::sigemptyset(&mut hup.sa_mask);
        libc::sigaction(libc::SIGHUP, &hup, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Only SIGINT/SIGTERM → [`stop_requested`], for short-lived commands (a trace client, the
/// demo) that must clean up before they exit.
pub fn install_stop() -> std::io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: an all-zero sigaction is valid; the handler only stores to an atomic, which
        // is async-signal-safe.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// How many SIGINT/SIGTERM arrived so far.
pub fn stop_requests() -> u32 {
    STOPS.load(Ordering::SeqCst)
}

/// True once per SIGHUP received.
pub fn take_reload() -> bool {
    RELOAD.swap(false, Ordering::SeqCst)
}

/// The reload SIGHUP asks for, asked from inside (ldirectord's `autoreload`).
pub fn request_reload() {
    RELOAD.store(true, Ordering::SeqCst);
}

pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// A stop that skips the graceful drain, as a second signal does (after a handover the new
/// process already serves every connection).
pub fn request_stop_now() {
    STOPS.fetch_max(2, Ordering::SeqCst);
    STOP.store(true, Ordering::SeqCst);
}
