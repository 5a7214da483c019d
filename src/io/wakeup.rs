//! A wake-up another thread can send to one asleep in `poll` (an eventfd): the control thread
//! rings a worker when it queues a request, so the worker answers at once instead of at the end
//! of its idle poll period. Costs nothing per packet: a worker only polls when idle.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// An eventfd counter: [`Wakeup::wake`] makes its descriptor readable until [`Wakeup::clear`].
#[derive(Debug)]
pub struct Wakeup(OwnedFd);

impl Wakeup {
    pub fn new() -> std::io::Result<Wakeup> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and nothing else owns it.
        Ok(Wakeup(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Makes the descriptor readable (adds one to the counter; never blocks).
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to a descriptor we own. A full counter
        // (EAGAIN) means the descriptor is readable already.
        let _ = unsafe {
            libc::write(
                self.raw_fd(),
                (&one as *const u64).cast::<libc::c_void>(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Resets the counter, so the next `poll` sleeps again.
    pub fn clear(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64; EAGAIN (not woken) is fine.
        let _ = unsafe {
            libc::read(
                self.raw_fd(),
                (&mut count as *mut u64).cast::<libc::c_void>(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_makes_poll_return_until_cleared() {
        let w = Wakeup::new().unwrap();
        let mut fds = [libc::pollfd {
            fd: w.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        assert!(!crate::io::socket::wait_readable(&mut fds, 0));
        w.wake();
        w.wake();
        assert!(crate::io::socket::wait_readable(&mut fds, 1000));
        w.clear();
        assert!(!crate::io::socket::wait_readable(&mut fds, 0));
    }
}
