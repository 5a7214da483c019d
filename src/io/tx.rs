//! Batched transmit with `sendmmsg`, straight from receive-ring memory.

use std::os::fd::RawFd;

/// Outcome counters of one flush.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    pub sent: u64,
    pub failed: u64,
    pub syscalls: u64,
}

/// Frames queued for one egress socket. All storage is allocated once, at start.
pub struct TxQueue {
    fd: RawFd,
    iovecs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    len: usize,
}

// SAFETY: the raw pointers in `iovecs`/`msgs` only ever point into memory that the owning
// worker holds for the duration between `push` and `flush`; the queue is used by one thread.
unsafe impl Send for TxQueue {}

/// How often a transiently full socket (`ENOBUFS`/`EAGAIN`) is retried before the rest of the
/// batch is dropped and counted.
const MAX_RETRIES: u32 = 64;

impl TxQueue {
    pub fn new(fd: RawFd, capacity: usize) -> TxQueue {
        let iovecs = vec![
            libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0
            };
            capacity
        ];
        // SAFETY: mmsghdr is plain old data; all-zero is a valid (empty) value.
        let msgs = vec![unsafe { std::mem::zeroed::<libc::mmsghdr>() }; capacity];
        TxQueue {
            fd,
            iovecs,
            msgs,
            len: 0,
        }
    }

    pub fn is_full(&self) -> bool {
        self.len == self.iovecs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `len` bytes at `data` (a `virtio_net_hdr` followed by the frame).
    ///
    /// # Safety
    /// `data..data+len` must stay valid and unchanged until the next [`TxQueue::flush`].
    pub unsafe fn push(&mut self, data: *const u8, len: usize) -> bool {
        if self.is_full() {
            return false;
        }
        self.iovecs[self.len] = libc::iovec {
            iov_base: data as *mut libc::c_void,
            iov_len: len,
        };
        self.len += 1;
        true
    }

    /// Sends everything queued with as few `sendmmsg` calls as the kernel allows.
    pub fn flush(&mut self) -> Flushed {
        let mut out = Flushed::default();
        let mut off = 0;
        let mut retries = 0;
        for i in 0..self.len {
            let m = &mut self.msgs[i].msg_hdr;
            m.msg_iov = &mut self.iovecs[i];
            m.msg_iovlen = 1;
        }
        while off < self.len {
            // SAFETY: msgs[off..len] point at iovecs whose buffers the caller keeps valid
            // until this flush returns (the `push` contract).
            let rc = unsafe {
                libc::sendmmsg(
                    self.fd,
                    self.msgs.as_mut_ptr().add(off),
                    (self.len - off) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            out.syscalls += 1;
            if rc > 0 {
                off += rc as usize;
                out.sent += rc as u64;
                continue;
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) if retries < MAX_RETRIES => {
                    retries += 1;
                    std::thread::yield_now();
                }
                _ => {
                    // The frame at `off` cannot be sent (e.g. oversize without GSO, interface
                    // down): count it and carry on with the rest.
                    out.failed += 1;
                    off += 1;
                }
            }
        }
        self.len = 0;
        out
    }
}
