//! Batched transmit with `sendmmsg`, straight from receive-ring memory.
//!
//! The contract that makes sending from the ring safe is [`Forwarding`]'s: a frame queued for
//! transmit is sent before the ring block holding it goes back to the kernel. The datapath
//! only ever sees that safe wrapper.

use std::os::fd::RawFd;

use crate::io::ring::{Batch, RxFrame};

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
    unsafe fn push(&mut self, data: *const u8, len: usize) -> bool {
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

impl std::ops::AddAssign for Flushed {
    fn add_assign(&mut self, o: Flushed) {
        self.sent += o.sent;
        self.failed += o.failed;
        self.syscalls += o.syscalls;
    }
}

/// One receive batch being forwarded. Frames are handed out one at a time; the caller sends
/// the frame it was last handed, rewritten in place, with [`Forwarding::send`]. Everything
/// queued is sent before the batch's memory goes back to the kernel: [`Forwarding::finish`]
/// (or dropping this value) flushes every queue first, then releases the batch.
pub struct Forwarding<'q, 'r> {
    queues: &'q mut [TxQueue],
    /// The frame handed out last: where it is, its length, and whether it lives in the ring's
    /// single copy buffer (then it must be sent before the next frame is taken).
    last: Option<(*const u8, usize, bool)>,
    flushed: Flushed,
    // Declared last: dropped after `Drop::drop` has flushed the queues.
    batch: Batch<'r>,
}

impl<'q, 'r> Forwarding<'q, 'r> {
    /// `queues`: one per egress interface, indexed as the snapshot's `egress`.
    pub fn new(batch: Batch<'r>, queues: &'q mut [TxQueue]) -> Forwarding<'q, 'r> {
        Forwarding {
            queues,
            last: None,
            flushed: Flushed::default(),
            batch,
        }
    }

    /// See [`Batch::peek_ahead`].
    #[inline]
    pub fn peek_ahead(&mut self) -> Option<&[u8]> {
        self.batch.peek_ahead()
    }

    /// The next frame of the batch.
    #[inline]
    pub fn next_frame(&mut self) -> Option<RxFrame<'_>> {
        let f = self.batch.next_frame()?;
        self.last = Some((f.buf.as_ptr(), f.buf.len(), f.scratch));
        Some(f)
    }

    /// Queues the frame last handed out (its buffer as rewritten) on egress `egress`.
    /// `false` if there is no such egress or no frame was handed out; each frame is sent at
    /// most once.
    #[inline]
    pub fn send(&mut self, egress: u16) -> bool {
        let Some((ptr, len, scratch)) = self.last.take() else {
            return false;
        };
        let Some(q) = self.queues.get_mut(usize::from(egress)) else {
            return false;
        };
        if q.is_full() {
            self.flushed += q.flush();
        }
        // SAFETY: the frame lies in memory the batch owns — a ring block or slot, handed back
        // to the kernel only when `self.batch` drops, after every queue is flushed (`finish`,
        // `Drop`) — or in the ring's copy buffer, which the next `next_frame` may overwrite,
        // so such a frame is flushed right here.
        unsafe {
            q.push(ptr, len);
        }
        if scratch {
            self.flushed += q.flush();
        }
        true
    }

    fn flush_all(&mut self) {
        for q in self.queues.iter_mut() {
            if !q.is_empty() {
                self.flushed += q.flush();
            }
        }
    }

    /// Sends everything queued, releases the batch, and says how the sending went.
    pub fn finish(mut self) -> Flushed {
        self.flush_all();
        self.flushed
    }
}

impl Drop for Forwarding<'_, '_> {
    fn drop(&mut self) {
        self.flush_all();
    }
}
