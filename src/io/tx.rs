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

/// Room for the headers a packet composed by the datapath starts with (virtio header,
/// Ethernet, outer IPv4 and UDP/GUE or GRE headers, and a segment's inner IPv4 and TCP
/// headers, options included).
pub const HEAD_CAP: usize = 192;

/// Composed packets one queue holds before it is flushed (their heads live in the queue).
const HEAD_SLOTS: usize = 512;

/// Frames queued for one egress socket. All storage is allocated once, at start.
///
/// A queued frame is one `iovec` into the ring, or two: a head the datapath composed into one
/// of the queue's own slots (a tunnel's outer headers), then the rest from the ring.
pub struct TxQueue {
    fd: RawFd,
    /// Two per message; the second is used by composed packets only.
    iovecs: Vec<[libc::iovec; 2]>,
    iov_used: Vec<usize>,
    msgs: Vec<libc::mmsghdr>,
    len: usize,
    heads: Vec<[u8; HEAD_CAP]>,
    heads_used: usize,
}

// SAFETY: the raw pointers in `iovecs`/`msgs` only ever point into memory that the owning
// worker holds for the duration between `push` and `flush`; the queue is used by one thread.
unsafe impl Send for TxQueue {}

/// How often a transiently full socket (`ENOBUFS`/`EAGAIN`) is retried before the rest of the
/// batch is dropped and counted.
const MAX_RETRIES: u32 = 64;

impl TxQueue {
    pub fn new(fd: RawFd, capacity: usize) -> TxQueue {
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let iovecs = vec![[empty; 2]; capacity];
        // SAFETY: mmsghdr is plain old data; all-zero is a valid (empty) value.
        let msgs = vec![unsafe { std::mem::zeroed::<libc::mmsghdr>() }; capacity];
        TxQueue {
            fd,
            iovecs,
            iov_used: vec![1; capacity],
            msgs,
            len: 0,
            heads: vec![[0; HEAD_CAP]; HEAD_SLOTS.min(capacity)],
            heads_used: 0,
        }
    }

    pub fn is_full(&self) -> bool {
        self.len == self.iovecs.len()
    }

    fn heads_full(&self) -> bool {
        self.is_full() || self.heads_used == self.heads.len()
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
        self.iovecs[self.len][0] = libc::iovec {
            iov_base: data as *mut libc::c_void,
            iov_len: len,
        };
        self.iov_used[self.len] = 1;
        self.len += 1;
        true
    }

    /// Queues a packet whose head `fill` writes into the next head slot (returning the
    /// head's length and the part of `data..data+len` that follows it).
    ///
    /// # Safety
    /// As [`TxQueue::push`] for `data..data+len`.
    unsafe fn push_composed(
        &mut self,
        data: *const u8,
        len: usize,
        fill: impl FnOnce(&mut [u8; HEAD_CAP]) -> (usize, std::ops::Range<usize>),
    ) -> bool {
        if self.heads_full() {
            return false;
        }
        let slot = &mut self.heads[self.heads_used];
        let (head_len, rest) = fill(slot);
        if head_len > HEAD_CAP || rest.start > rest.end || rest.end > len {
            return false;
        }
        self.heads_used += 1;
        let v = &mut self.iovecs[self.len];
        v[0] = libc::iovec {
            iov_base: slot.as_mut_ptr().cast(),
            iov_len: head_len,
        };
        // SAFETY: `rest` lies within `data..data+len` (checked above), one allocation.
        let rest_ptr = unsafe { data.add(rest.start) };
        v[1] = libc::iovec {
            iov_base: rest_ptr as *mut libc::c_void,
            iov_len: rest.end - rest.start,
        };
        self.iov_used[self.len] = if rest.is_empty() { 1 } else { 2 };
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
            m.msg_iov = self.iovecs[i].as_mut_ptr();
            m.msg_iovlen = self.iov_used[i];
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
        self.heads_used = 0;
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

    /// Queues `count` packets composed from the frame last handed out on egress `egress`:
    /// `fill(k, slot)` writes packet `k`'s head into `slot` and returns its length and the
    /// part of the frame that follows it. The frame is released as by [`Forwarding::send`].
    /// Returns how many packets could not be queued.
    #[inline]
    pub fn send_composed(
        &mut self,
        egress: u16,
        count: u16,
        mut fill: impl FnMut(u16, &mut [u8; HEAD_CAP]) -> (usize, std::ops::Range<usize>),
    ) -> u16 {
        let Some((ptr, len, scratch)) = self.last.take() else {
            return count;
        };
        let Some(q) = self.queues.get_mut(usize::from(egress)) else {
            return count;
        };
        let mut failed = 0;
        for k in 0..count {
            if q.heads_full() {
                self.flushed += q.flush();
            }
            // SAFETY: as in `send`: the frame stays valid until the queue is flushed, which
            // happens before the batch is released or, for a copy-buffer frame, right below.
            if !unsafe { q.push_composed(ptr, len, |slot| fill(k, slot)) } {
                failed += 1;
            }
        }
        if scratch {
            self.flushed += q.flush();
        }
        failed
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
