//! PACKET_MMAP receive rings, TPACKET_V3 (blocks) or TPACKET_V2 (frame slots), behind one
//! batch interface.
//!
//! The ownership hand-off is the whole contract: a block (V3) or frame slot (V2) whose status
//! word has `TP_STATUS_USER` belongs to us until we store `TP_STATUS_KERNEL` into it with
//! Release ordering; before that the kernel never writes it, after that we never touch it.
//! A [`Batch`] owns the blocks or slots it covers and hands them back when dropped, so frames
//! referenced by queued transmits must be sent before the batch is dropped (the worker does:
//! `tx.flush()` then drop).
//!
//! V3 versus V2, as measured for this project (bench/README.md): V3 packs variable-size frames
//! into large blocks and wakes the reader once per block, which is what makes it cheap at high
//! rates, but a block is only handed over when it is full or its retire timer fires (≥ 1 ms,
//! in jiffies), so at low rates every frame waits for that timer. V2 wakes the reader per
//! frame. Both are supported; `ring.version` picks one.

use std::os::fd::RawFd;
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};

use super::socket::set_opt;
use super::{IoError, VNET_HDR_LEN, sys_err};

/// Most V2 frame slots handed out in one batch (bounds the transmit queue).
pub const MAX_V2_BATCH: usize = 256;

/// Receive buffer for V2 frames too large for a slot: a 64 KiB GSO super-frame plus its
/// virtio header and link header, rounded up.
const COPY_BUF_LEN: usize = 1 << 17;

/// `PACKET_COPY_THRESH` socket option (linux/if_packet.h).
const PACKET_COPY_THRESH: libc::c_int = 7;

#[derive(Clone, Copy, Debug)]
enum Layout {
    V3 { block_size: usize, blocks: usize },
    V2 { frame_size: usize, frames: usize },
}

/// A mapped receive ring. Owns the mapping; the socket is owned by the caller and must outlive it.
pub struct RxRing {
    map: *mut u8,
    map_len: usize,
    layout: Layout,
    cursor: usize,
    fd: RawFd,
    /// V2 only: where a frame larger than a slot is read (see `RxFrame::scratch`).
    copy_buf: Box<[u8]>,
}

// SAFETY: the mapping is owned exclusively by this value; moving it to another thread moves
// that exclusive ownership (workers are created on the control thread and moved into theirs).
unsafe impl Send for RxRing {}

/// Which TPACKET ring layout the receive side uses. See `RxRing` for the measured trade-off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RingVersion {
    /// TPACKET_V3: variable-size frames packed into blocks; one wake-up per block.
    V3,
    /// TPACKET_V2: fixed-size frame slots; one wake-up per frame.
    V2,
}

/// The ring's shape: layout version, block size and count, the V3 retire timeout, the V2
/// slot size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingGeometry {
    pub version: RingVersion,
    /// Bytes per ring block (V3) or per allocation unit (V2). Power of two, multiple of the page size.
    pub block_size: u32,
    pub block_count: u32,
    /// TPACKET_V3 block retire timeout in milliseconds (≥ 1).
    pub block_timeout_ms: u32,
    /// Bytes per frame slot for TPACKET_V2 (power of two).
    pub frame_size: u32,
}

impl std::fmt::Debug for RxRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxRing")
            .field("layout", &self.layout)
            .field("map_len", &self.map_len)
            .finish()
    }
}

impl RxRing {
    /// Sets the TPACKET version, requests the ring and maps it.
    pub fn new(fd: RawFd, opts: &RingGeometry, interface: &str) -> Result<RxRing, IoError> {
        let block_size = opts.block_size as usize;
        let blocks = opts.block_count as usize;
        if !block_size.is_power_of_two() || block_size < 4096 || blocks < 2 {
            return Err(IoError::Geometry(format!(
                "block_size {block_size} must be a power of two ≥ 4096 and block_count {blocks} ≥ 2"
            )));
        }
        let layout = match opts.version {
            RingVersion::V3 => {
                let version = libc::tpacket_versions::TPACKET_V3 as libc::c_int;
                set_opt(
                    fd,
                    libc::SOL_PACKET,
                    libc::PACKET_VERSION,
                    &version,
                    "PACKET_VERSION",
                    interface,
                )?;
                let frame_size: u32 = 2048;
                let req = libc::tpacket_req3 {
                    tp_block_size: opts.block_size,
                    tp_block_nr: opts.block_count,
                    tp_frame_size: frame_size,
                    tp_frame_nr: opts.block_size / frame_size * opts.block_count,
                    tp_retire_blk_tov: opts.block_timeout_ms.max(1),
                    tp_sizeof_priv: 0,
                    tp_feature_req_word: 0,
                };
                set_opt(
                    fd,
                    libc::SOL_PACKET,
                    libc::PACKET_RX_RING,
                    &req,
                    "PACKET_RX_RING (V3)",
                    interface,
                )?;
                Layout::V3 { block_size, blocks }
            }
            RingVersion::V2 => {
                let frame_size = opts.frame_size as usize;
                if !frame_size.is_power_of_two() || frame_size < 256 || frame_size > block_size {
                    return Err(IoError::Geometry(format!(
                        "frame_size {frame_size} must be a power of two in 256..=block_size"
                    )));
                }
                let version = libc::tpacket_versions::TPACKET_V2 as libc::c_int;
                set_opt(
                    fd,
                    libc::SOL_PACKET,
                    libc::PACKET_VERSION,
                    &version,
                    "PACKET_VERSION",
                    interface,
                )?;
                // Frames that do not fit a slot (GSO super-frames from veth with default
                // offloads) are marked TP_STATUS_COPY and queued whole on the socket, as
                // libpcap does for its immediate mode; `next_frame` reads them with recv.
                let one: libc::c_int = 1;
                set_opt(
                    fd,
                    libc::SOL_PACKET,
                    PACKET_COPY_THRESH,
                    &one,
                    "PACKET_COPY_THRESH",
                    interface,
                )?;
                let rcvbuf: libc::c_int = 8 << 20;
                // Best effort: without CAP_NET_ADMIN the smaller default still works.
                let _ = set_opt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    &rcvbuf,
                    "SO_RCVBUFFORCE",
                    interface,
                );
                let frames = block_size / frame_size * blocks;
                let req = libc::tpacket_req {
                    tp_block_size: opts.block_size,
                    tp_block_nr: opts.block_count,
                    tp_frame_size: opts.frame_size,
                    tp_frame_nr: frames as u32,
                };
                set_opt(
                    fd,
                    libc::SOL_PACKET,
                    libc::PACKET_RX_RING,
                    &req,
                    "PACKET_RX_RING (V2)",
                    interface,
                )?;
                Layout::V2 { frame_size, frames }
            }
        };
        let map_len = block_size * blocks;
        // SAFETY: mapping the ring the kernel just allocated for this socket; length matches
        // the request; MAP_SHARED is how PACKET_MMAP shares it.
        let map = unsafe {
            libc::mmap(
                ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE | libc::MAP_LOCKED,
                fd,
                0,
            )
        };
        let map = if map == libc::MAP_FAILED {
            // MAP_LOCKED fails under a small RLIMIT_MEMLOCK; the ring works unlocked too.
            // SAFETY: as above, without MAP_LOCKED.
            let m = unsafe {
                libc::mmap(
                    ptr::null_mut(),
                    map_len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_POPULATE,
                    fd,
                    0,
                )
            };
            if m == libc::MAP_FAILED {
                return Err(sys_err("mmap ring", interface));
            }
            m
        } else {
            map
        };
        let copy_buf = match layout {
            Layout::V2 { .. } => vec![0u8; COPY_BUF_LEN].into_boxed_slice(),
            Layout::V3 { .. } => Box::default(),
        };
        Ok(RxRing {
            map: map.cast(),
            map_len,
            layout,
            cursor: 0,
            fd,
            copy_buf,
        })
    }

    /// The next batch of frames owned by userspace, if any. Never blocks.
    pub fn next_batch(&mut self) -> Option<Batch<'_>> {
        match self.layout {
            Layout::V3 { block_size, .. } => {
                // SAFETY: cursor < blocks, so the block descriptor lies inside the mapping.
                let bd = unsafe { self.map.add(self.cursor * block_size) };
                if block_status(bd).load(Ordering::Acquire) & libc::TP_STATUS_USER == 0 {
                    return None;
                }
                // SAFETY: the block is ours (TP_STATUS_USER seen with Acquire); these header
                // fields lie at fixed offsets inside its descriptor.
                let (num, first) = unsafe {
                    let h = ptr::addr_of!((*bd.cast::<libc::tpacket_block_desc>()).hdr.bh1);
                    ((*h).num_pkts as usize, (*h).offset_to_first_pkt as usize)
                };
                Some(Batch {
                    ring: self,
                    state: BatchState::V3 {
                        block: bd,
                        block_size,
                        remaining: num,
                        next_offset: first,
                        ahead_remaining: num,
                        ahead_offset: first,
                    },
                })
            }
            Layout::V2 { frame_size, frames } => {
                let mut count = 0;
                while count < MAX_V2_BATCH.min(frames) {
                    let idx = (self.cursor + count) % frames;
                    // SAFETY: idx < frames, so the slot lies inside the mapping.
                    let slot = unsafe { self.map.add(idx * frame_size) };
                    if slot_status(slot).load(Ordering::Acquire) & libc::TP_STATUS_USER == 0 {
                        break;
                    }
                    count += 1;
                }
                if count == 0 {
                    return None;
                }
                Some(Batch {
                    ring: self,
                    state: BatchState::V2 {
                        frame_size,
                        frames,
                        first: 0,
                        count,
                        next: 0,
                        ahead: 0,
                    },
                })
            }
        }
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped; no Batch can outlive the ring.
        unsafe {
            libc::munmap(self.map.cast(), self.map_len);
        }
    }
}

fn block_status<'a>(bd: *mut u8) -> &'a AtomicU32 {
    // SAFETY: block_status is a naturally aligned u32 inside the mapped block descriptor,
    // shared with the kernel, so it is accessed atomically.
    unsafe {
        &*ptr::addr_of_mut!(
            (*bd.cast::<libc::tpacket_block_desc>())
                .hdr
                .bh1
                .block_status
        )
        .cast::<AtomicU32>()
    }
}

fn slot_status<'a>(slot: *mut u8) -> &'a AtomicU32 {
    // SAFETY: tp_status is the first, aligned u32 of a mapped tpacket2_hdr.
    unsafe {
        &*ptr::addr_of_mut!((*slot.cast::<libc::tpacket2_hdr>()).tp_status).cast::<AtomicU32>()
    }
}

enum BatchState {
    V3 {
        block: *mut u8,
        block_size: usize,
        remaining: usize,
        next_offset: usize,
        /// The lookahead cursor (`Batch::peek_ahead`), never behind the main one.
        ahead_remaining: usize,
        ahead_offset: usize,
    },
    V2 {
        frame_size: usize,
        frames: usize,
        first: usize,
        count: usize,
        next: usize,
        ahead: usize,
    },
}

/// Frames owned by userspace until this value is dropped.
pub struct Batch<'r> {
    ring: &'r mut RxRing,
    state: BatchState,
}

/// One received frame, inside the ring.
pub struct RxFrame<'a> {
    /// The `virtio_net_hdr` followed by the Ethernet frame: contiguous in the ring, so both
    /// can be rewritten in place and transmitted as one buffer.
    pub buf: &'a mut [u8],
    /// Length of the frame on the wire (may exceed `buf.len() - VNET_HDR_LEN` if the ring
    /// truncated it).
    pub wire_len: usize,
    /// `tp_status` bits (`TP_STATUS_VLAN_VALID`, `TP_STATUS_CSUMNOTREADY`, …).
    pub status: u32,
    /// The frame lives in the ring's single copy buffer, not in a slot: it must be sent
    /// before the next frame is taken from the batch.
    pub scratch: bool,
}

impl RxFrame<'_> {
    pub fn truncated(&self) -> bool {
        self.buf.len() - VNET_HDR_LEN < self.wire_len
    }
}

impl Batch<'_> {
    /// The next frame of the batch. Frames whose ring header is inconsistent (never seen from a
    /// correct kernel) end the batch rather than risk reading outside the block.
    pub fn next_frame(&mut self) -> Option<RxFrame<'_>> {
        match &mut self.state {
            BatchState::V3 {
                block,
                block_size,
                remaining,
                next_offset,
                ..
            } => {
                if *remaining == 0 {
                    return None;
                }
                *remaining -= 1;
                let Some(f) = v3_frame(*block, *block_size, *next_offset) else {
                    *remaining = 0;
                    return None;
                };
                *next_offset = f.next_offset;
                // SAFETY: `v3_frame` checked that the range lies inside the block, which is
                // owned by us for the life of this batch, and no other live reference covers
                // it: each frame is handed out once per batch (`peek_ahead`'s shared views
                // end before the next call on the batch).
                let buf = unsafe { std::slice::from_raw_parts_mut(block.add(f.start), f.len) };
                Some(RxFrame {
                    buf,
                    wire_len: f.wire_len,
                    status: f.status,
                    scratch: false,
                })
            }
            BatchState::V2 {
                frame_size,
                frames,
                first,
                count,
                next,
                ..
            } => {
                if *next >= *count {
                    return None;
                }
                let idx = (self.ring.cursor + *first + *next) % *frames;
                *next += 1;
                let f = v2_frame(self.ring.map, *frame_size, idx)?;
                let status = f.status & !libc::TP_STATUS_USER;
                if status & libc::TP_STATUS_COPY != 0 {
                    // The whole frame waits on the socket queue, in slot order.
                    // SAFETY: copy_buf is a live, writable buffer of the given length.
                    let n = unsafe {
                        libc::recv(
                            self.ring.fd,
                            self.ring.copy_buf.as_mut_ptr().cast(),
                            self.ring.copy_buf.len(),
                            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                        )
                    };
                    if n > 0 && (n as usize) <= self.ring.copy_buf.len() {
                        let n = n as usize;
                        return Some(RxFrame {
                            buf: &mut self.ring.copy_buf[..n],
                            wire_len: n.saturating_sub(VNET_HDR_LEN),
                            status: status & !libc::TP_STATUS_COPY,
                            scratch: true,
                        });
                    }
                    // No copy queued (receive buffer full): fall through with the truncated
                    // slot contents, which the worker counts as ring_truncated.
                }
                // SAFETY: `v2_frame` checked that the range lies inside the slot, which this
                // batch owns; each frame is handed out once per batch.
                let buf =
                    unsafe { std::slice::from_raw_parts_mut(self.ring.map.add(f.start), f.len) };
                Some(RxFrame {
                    buf,
                    wire_len: f.wire_len,
                    status,
                    scratch: false,
                })
            }
        }
    }
    /// The frame after the last one this method returned (starting with the batch's first),
    /// read-only, without handing it out: the worker peeks a few frames ahead of
    /// `next_frame` to prefetch what they will need. `None` past the end of the batch. A frame
    /// waiting whole on the socket queue (V2 copy) shows its truncated slot copy here.
    pub fn peek_ahead(&mut self) -> Option<&[u8]> {
        match &mut self.state {
            BatchState::V3 {
                block,
                block_size,
                ahead_remaining,
                ahead_offset,
                ..
            } => {
                if *ahead_remaining == 0 {
                    return None;
                }
                *ahead_remaining -= 1;
                let Some(f) = v3_frame(*block, *block_size, *ahead_offset) else {
                    *ahead_remaining = 0;
                    return None;
                };
                *ahead_offset = f.next_offset;
                // SAFETY: inside the owned block (checked by `v3_frame`); shared and short-lived:
                // it ends before the next `&mut self` call, so it never overlaps a frame handed
                // out by `next_frame` (which needs `&mut self` too).
                Some(unsafe { std::slice::from_raw_parts(block.add(f.start), f.len) })
            }
            BatchState::V2 {
                frame_size,
                frames,
                first,
                count,
                ahead,
                ..
            } => {
                if *ahead >= *count {
                    return None;
                }
                let idx = (self.ring.cursor + *first + *ahead) % *frames;
                *ahead += 1;
                let f = v2_frame(self.ring.map, *frame_size, idx)?;
                // SAFETY: inside the owned slot (checked by `v2_frame`); shared and short-lived
                // as in V3.
                Some(unsafe { std::slice::from_raw_parts(self.ring.map.add(f.start), f.len) })
            }
        }
    }
}

/// Where a TPACKET_V2 frame lies in the mapping: `start..start + len` is the virtio header
/// plus the captured bytes.
struct V2Frame {
    start: usize,
    len: usize,
    wire_len: usize,
    status: u32,
}

/// Reads the header of V2 slot `idx` (< the ring's frame count) of a batch we own. `None` if
/// the header is inconsistent (never seen from a correct kernel): the batch ends there.
fn v2_frame(map: *mut u8, frame_size: usize, idx: usize) -> Option<V2Frame> {
    let slot_start = idx * frame_size;
    // SAFETY: idx < frames, so the slot lies inside the mapping; it starts with a
    // tpacket2_hdr and is owned by userspace while a batch holds it.
    let h = unsafe { &*map.add(slot_start).cast::<libc::tpacket2_hdr>() };
    let mac = h.tp_mac as usize;
    let snap = h.tp_snaplen as usize;
    if mac < VNET_HDR_LEN || mac + snap > frame_size {
        return None;
    }
    Some(V2Frame {
        start: slot_start + mac - VNET_HDR_LEN,
        len: snap + VNET_HDR_LEN,
        wire_len: h.tp_len as usize,
        status: h.tp_status,
    })
}

/// Where a TPACKET_V3 frame lies in its block: `start..start + len` is the virtio header plus
/// the captured bytes.
struct V3Frame {
    start: usize,
    len: usize,
    next_offset: usize,
    wire_len: usize,
    status: u32,
}

/// Reads the frame header at `off` of a block we own. `None` if the header is inconsistent
/// (never seen from a correct kernel): the caller ends the batch rather than risk reading
/// outside the block.
fn v3_frame(block: *mut u8, block_size: usize, off: usize) -> Option<V3Frame> {
    if off + size_of_v3() > block_size {
        return None;
    }
    // SAFETY: `off` plus the header size is inside the block (checked above) and the block is
    // owned by userspace while a batch holds it.
    let h = unsafe { &*block.add(off).cast::<libc::tpacket3_hdr>() };
    let mac = h.tp_mac as usize;
    let snap = h.tp_snaplen as usize;
    let start = off + mac;
    if mac < VNET_HDR_LEN || start + snap > block_size {
        return None;
    }
    Some(V3Frame {
        start: start - VNET_HDR_LEN,
        len: snap + VNET_HDR_LEN,
        next_offset: off + h.tp_next_offset as usize,
        wire_len: h.tp_len as usize,
        status: h.tp_status,
    })
}

const fn size_of_v3() -> usize {
    std::mem::size_of::<libc::tpacket3_hdr>()
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        match self.state {
            BatchState::V3 { block, .. } => {
                block_status(block).store(libc::TP_STATUS_KERNEL, Ordering::Release);
                if let Layout::V3 { blocks, .. } = self.ring.layout {
                    self.ring.cursor = (self.ring.cursor + 1) % blocks;
                }
            }
            BatchState::V2 {
                frame_size,
                frames,
                count,
                ..
            } => {
                for i in 0..count {
                    let idx = (self.ring.cursor + i) % frames;
                    // SAFETY: idx < frames.
                    let slot = unsafe { self.ring.map.add(idx * frame_size) };
                    slot_status(slot).store(libc::TP_STATUS_KERNEL, Ordering::Release);
                }
                self.ring.cursor = (self.ring.cursor + count) % frames;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::socket::{RxSocketPlan, if_index, open_rx};
    use std::net::{Ipv4Addr, UdpSocket};

    /// Per batch: the payloads `peek_ahead` showed, and those `next_frame` handed out.
    type Seen = Vec<(Vec<Vec<u8>>, Vec<Vec<u8>>)>;

    /// Receives `n` UDP datagrams to 127.0.0.1 through a ring on `lo`, in a network namespace
    /// private to the calling thread (so nothing else on the machine is seen or disturbed).
    /// `None` when not root.
    fn peeked_and_taken(version: RingVersion, n: u16) -> Option<Seen> {
        // SAFETY: geteuid has no preconditions; unshare affects only this thread.
        if unsafe { libc::geteuid() } != 0 || unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            eprintln!("skipping: needs root");
            return None;
        }
        set_lo_up();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let ifindex = if_index("lo").unwrap();
        // Room for every frame (no drops), and for V3 small blocks, so that a run spans several.
        let (block_size, block_count) = match version {
            RingVersion::V3 => (4096, 64),
            RingVersion::V2 => (1 << 16, 16),
        };
        let opts = RingGeometry {
            version,
            block_size,
            block_count,
            block_timeout_ms: 1,
            frame_size: 1 << 11,
        };
        let filter = crate::io::filter::receive_filter(&[Ipv4Addr::LOCALHOST], &[], &[], None);
        let plan = RxSocketPlan {
            interface: "lo",
            ifindex,
            fanout: crate::io::socket::Fanout::Alone,
            filter: &filter,
        };
        let (fd, mut ring, _) = open_rx(&plan, |fd| RxRing::new(fd, &opts, "lo")).unwrap();
        for i in 0..n {
            sock.send_to(&i.to_be_bytes(), "127.0.0.1:9").unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let payload = |buf: &[u8]| buf[buf.len() - 2..].to_vec();
        let mut out = Vec::new();
        while let Some(mut batch) = ring.next_batch() {
            let (mut peeked, mut taken) = (Vec::new(), Vec::new());
            // Peek two ahead first, then interleave as the worker does.
            for _ in 0..2 {
                if let Some(b) = batch.peek_ahead() {
                    peeked.push(payload(b));
                }
            }
            loop {
                if let Some(b) = batch.peek_ahead() {
                    peeked.push(payload(b));
                }
                let Some(f) = batch.next_frame() else { break };
                taken.push(payload(f.buf));
            }
            out.push((peeked, taken));
        }
        drop(fd);
        Some(out)
    }

    fn set_lo_up() {
        // SAFETY: a plain ioctl on a socket we own, with an initialised ifreq.
        unsafe {
            let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            let mut req: libc::ifreq = std::mem::zeroed();
            req.ifr_name[0] = b'l' as libc::c_char;
            req.ifr_name[1] = b'o' as libc::c_char;
            libc::ioctl(s, libc::SIOCGIFFLAGS, &mut req);
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(s, libc::SIOCSIFFLAGS, &req);
            libc::close(s);
        }
    }

    /// Two new fanout groups get ids of their own from the kernel; a third socket joins one.
    fn fanout_ids() -> Option<(u16, u16, Option<u16>)> {
        use crate::io::socket::Fanout;
        // SAFETY: geteuid has no preconditions; unshare affects only this thread.
        if unsafe { libc::geteuid() } != 0 || unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            eprintln!("skipping: needs root");
            return None;
        }
        set_lo_up();
        let ifindex = if_index("lo").unwrap();
        let filter = crate::io::filter::receive_filter(&[Ipv4Addr::LOCALHOST], &[], &[], None);
        let open = |fanout| {
            let plan = RxSocketPlan {
                interface: "lo",
                ifindex,
                fanout,
                filter: &filter,
            };
            open_rx(&plan, |_| Ok(())).unwrap()
        };
        let program = crate::io::filter::fanout_program(&[], &[]);
        let (a, _, ga) = open(Fanout::NewGroup(&program));
        let (b, _, gb) = open(Fanout::NewGroup(&program));
        let (c, _, gc) = open(Fanout::Join(ga.unwrap()));
        let ids = (ga.unwrap(), gb.unwrap(), gc);
        drop((a, b, c));
        Some(ids)
    }

    #[test]
    fn fanout_groups_get_distinct_ids_from_the_kernel() {
        let Some((a, b, joined)) = std::thread::spawn(fanout_ids).join().unwrap() else {
            return;
        };
        assert_ne!(a, b);
        assert_eq!(joined, Some(a));
    }

    fn check(version: RingVersion) {
        let n = 200;
        let Some(batches) = std::thread::spawn(move || peeked_and_taken(version, n))
            .join()
            .unwrap()
        else {
            return;
        };
        let mut all = Vec::new();
        for (peeked, taken) in &batches {
            // The lookahead sees exactly the frames of its batch, in order.
            assert_eq!(peeked, taken);
            all.extend(taken.iter().cloned());
        }
        // On lo the tap sees each datagram twice (sent, then looped back as received).
        all.dedup();
        let want: Vec<Vec<u8>> = (0..n).map(|i| i.to_be_bytes().to_vec()).collect();
        assert_eq!(all, want, "{version:?}: every datagram, in order");
        assert!(
            batches.len() > 1,
            "{version:?}: more than one batch exercised"
        );
    }

    #[test]
    fn peek_ahead_shows_the_frames_next_frame_hands_out_v3() {
        check(RingVersion::V3);
    }

    #[test]
    fn peek_ahead_shows_the_frames_next_frame_hands_out_v2() {
        check(RingVersion::V2);
    }
}
