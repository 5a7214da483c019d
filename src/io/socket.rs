//! AF_PACKET socket set-up: open, options, filter, bind, fanout, statistics.

use std::ffi::CString;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::filter::Insn;
use super::{IoError, sys_err};
use crate::wire::MacAddr;

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_ARP: u16 = 0x0806;

/// Looks up an interface index by name.
pub fn if_index(name: &str) -> Result<u32, IoError> {
    let c = CString::new(name).map_err(|_| IoError::Sys {
        what: "interface name",
        interface: name.to_string(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(sys_err("if_nametoindex", name));
    }
    Ok(idx)
}

/// The MTU of an interface (SIOCGIFMTU).
pub fn interface_mtu(name: &str) -> std::io::Result<u32> {
    if name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    // SAFETY: plain syscall with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned here alone.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFMTU reads the NUL-terminated name (checked shorter than IFNAMSIZ, the
    // rest zero) and writes the MTU into the request, which lives across the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel filled the `ifru_mtu` member of the union.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))
}

fn new_packet_socket(interface: &str) -> Result<OwnedFd, IoError> {
    // Protocol 0: the socket receives nothing until it is bound with a protocol, so options,
    // ring and filter are all in place before the first frame arrives.
    // SAFETY: plain syscall with constant arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(sys_err("socket(AF_PACKET)", interface));
    }
    // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn set_opt<T>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
    what: &'static str,
    interface: &str,
) -> Result<(), IoError> {
    // SAFETY: `value` points to a live `T` of the given size for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(sys_err(what, interface));
    }
    Ok(())
}

/// Attaches (or replaces) a classic BPF filter. Replacing is atomic in the kernel, so the
/// control thread can call this on a worker's socket while the worker runs.
pub fn attach_filter(fd: RawFd, program: &[Insn], interface: &str) -> Result<(), IoError> {
    set_program(
        fd,
        libc::SOL_SOCKET,
        libc::SO_ATTACH_FILTER,
        program,
        interface,
    )
}

/// Replaces the program that picks a fanout group member for each frame
/// (`PACKET_FANOUT_DATA`, on any member's socket; atomic in the kernel, so workers keep
/// running).
pub fn set_fanout_program(fd: RawFd, program: &[Insn], interface: &str) -> Result<(), IoError> {
    set_program(
        fd,
        libc::SOL_PACKET,
        libc::PACKET_FANOUT_DATA,
        program,
        interface,
    )
}

fn set_program(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    program: &[Insn],
    interface: &str,
) -> Result<(), IoError> {
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len())
            .map_err(|_| IoError::Geometry("socket filter too long".into()))?,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    let what = if name == libc::PACKET_FANOUT_DATA {
        "PACKET_FANOUT_DATA"
    } else {
        "SO_ATTACH_FILTER"
    };
    set_opt(fd, level, name, &prog, what, interface)
}

fn bind(fd: RawFd, ifindex: u32, protocol: u16, interface: &str) -> Result<(), IoError> {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = protocol.to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: `sll` is a valid sockaddr_ll and the length matches it.
    let rc = unsafe {
        libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(sys_err("bind", interface));
    }
    Ok(())
}

/// How a receive socket shares its interface's frames with the other workers' sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fanout<'p> {
    /// A single worker: no group (the group's per-frame hash would be pure overhead on the
    /// receiving CPU).
    Alone,
    /// The first socket of a group: the kernel picks an id no other group in the namespace
    /// uses (`PACKET_FANOUT_FLAG_UNIQUEID`), returned by [`open_rx`]. The group picks a member
    /// with the given program (`filter::fanout_program`).
    NewGroup(&'p [Insn]),
    /// Join the group [`Fanout::NewGroup`] created.
    Join(u16),
}

/// Options for a receive socket; the ring itself is set up by `ring::RxRing::new`.
pub struct RxSocketPlan<'a> {
    pub interface: &'a str,
    pub ifindex: u32,
    pub fanout: Fanout<'a>,
    pub filter: &'a [Insn],
}

/// Opens the receive socket of one worker on one interface and calls `setup_ring` with it
/// after `PACKET_VNET_HDR` (which must precede the ring) and before `bind` (so no frame lands
/// before the filter is attached). Returns the socket, the ring, and the fanout group id the
/// socket is in (for the next workers to join), if any.
pub fn open_rx<R>(
    plan: &RxSocketPlan<'_>,
    setup_ring: impl FnOnce(RawFd) -> Result<R, IoError>,
) -> Result<(OwnedFd, R, Option<u16>), IoError> {
    let fd = new_packet_socket(plan.interface)?;
    let raw = fd.as_raw_fd();
    let one: libc::c_int = 1;
    set_opt(
        raw,
        libc::SOL_PACKET,
        libc::PACKET_VNET_HDR,
        &one,
        "PACKET_VNET_HDR",
        plan.interface,
    )?;
    let ring = setup_ring(raw)?;
    // Never read our own transmissions back (a one-armed director would loop).
    set_opt(
        raw,
        libc::SOL_PACKET,
        libc::PACKET_IGNORE_OUTGOING,
        &one,
        "PACKET_IGNORE_OUTGOING",
        plan.interface,
    )?;
    attach_filter(raw, plan.filter, plan.interface)?;
    bind(raw, plan.ifindex, ETH_P_ALL, plan.interface)?;
    // The group's program (PACKET_FANOUT_CBPF) sends every packet of a flow, both directions,
    // to the same worker, so flow tables are per worker and lock-free. No DEFRAG flag: it
    // would make the kernel reassemble fragments before the tap, while uvs's documented
    // behaviour is to count and drop them (`fragment`).
    //
    // IGNORE_OUTGOING must be given here as well: once a socket joins a fanout group the
    // kernel registers the group's packet hook instead of the socket's, and the group takes
    // its ignore-outgoing bit from this flag only (fanout_add), so the socket option above
    // alone silently stops working and every transmitted frame comes back to be forwarded
    // again until its TTL runs out.
    let mode = libc::PACKET_FANOUT_CBPF | libc::PACKET_FANOUT_FLAG_IGNORE_OUTGOING;
    let (id, flags, program) = match plan.fanout {
        Fanout::Alone => return Ok((fd, ring, None)),
        Fanout::NewGroup(p) => (0, mode | libc::PACKET_FANOUT_FLAG_UNIQUEID, Some(p)),
        Fanout::Join(id) => (id, mode, None),
    };
    let arg: libc::c_int = libc::c_int::from(id) | (flags as libc::c_int) << 16;
    set_opt(
        raw,
        libc::SOL_PACKET,
        libc::PACKET_FANOUT,
        &arg,
        "PACKET_FANOUT",
        plan.interface,
    )?;
    if let Some(p) = program {
        set_fanout_program(raw, p, plan.interface)?;
    }
    Ok((fd, ring, Some(fanout_group_of(raw, plan.interface)?)))
}

/// The fanout group id a socket is in (`getsockopt(PACKET_FANOUT)`: id in the low 16 bits).
fn fanout_group_of(fd: RawFd, interface: &str) -> Result<u16, IoError> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` is a writable c_int and `len` its size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_FANOUT,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(sys_err("getsockopt(PACKET_FANOUT)", interface));
    }
    Ok((v & 0xffff) as u16)
}

/// Checks that this process may open packet sockets (root, or CAP_NET_RAW): opens one and
/// closes it again.
pub fn may_open_packet_sockets() -> std::io::Result<()> {
    // SAFETY: plain syscall; the result is checked and owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns; dropping it closes it.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

/// A plain transmit-only socket on an interface (protocol 0, no offload header): frames are
/// sent exactly as given, for tests that put hand-made frames on the wire.
pub fn open_raw_tx(interface: &str, ifindex: u32) -> Result<OwnedFd, IoError> {
    let fd = new_packet_socket(interface)?;
    bind(fd.as_raw_fd(), ifindex, 0, interface)?;
    Ok(fd)
}

/// Opens a transmit-only socket on an interface: protocol 0, so it never receives, and
/// `PACKET_VNET_HDR`, so each frame is sent with the offload header it arrived with.
/// No `PACKET_QDISC_BYPASS`: forwarded frames must stay visible to tcpdump on the director.
pub fn open_tx(interface: &str, ifindex: u32) -> Result<OwnedFd, IoError> {
    let fd = new_packet_socket(interface)?;
    let raw = fd.as_raw_fd();
    let one: libc::c_int = 1;
    set_opt(
        raw,
        libc::SOL_PACKET,
        libc::PACKET_VNET_HDR,
        &one,
        "PACKET_VNET_HDR",
        interface,
    )?;
    bind(raw, ifindex, 0, interface)?;
    Ok(fd)
}

/// Opens a socket that receives what `program` accepts of the `protocol` frames other hosts
/// send on the interface (never the director's own transmissions) and sends raw frames.
fn open_listening(
    interface: &str,
    ifindex: u32,
    protocol: u16,
    program: &[Insn],
) -> Result<OwnedFd, IoError> {
    let fd = new_packet_socket(interface)?;
    let raw = fd.as_raw_fd();
    let one: libc::c_int = 1;
    attach_filter(raw, program, interface)?;
    set_opt(
        raw,
        libc::SOL_PACKET,
        libc::PACKET_IGNORE_OUTGOING,
        &one,
        "PACKET_IGNORE_OUTGOING",
        interface,
    )?;
    bind(raw, ifindex, protocol, interface)?;
    Ok(fd)
}

/// The control thread's ARP socket on an interface (receives ARP only).
///
/// Bound to `ETH_P_ARP`, not `ETH_P_ALL`: an `ETH_P_ALL` socket runs (with its filter) for
/// every frame on the interface, on the sending CPU — at full load that was a measurable share
/// of the generator's core. ARP handlers run after the netdev ingress hook, which is why uvs's
/// nftables ARP rule lives in the ARP family's input hook (see `kernel_filter`).
///
/// With a VIP MAC the socket also adds it to the interface's unicast address list
/// (`PACKET_MR_UNICAST`), so a NIC that filters by destination MAC passes frames for it up;
/// a device without a unicast filter goes promiscuous instead. The kernel drops the address
/// again when the socket closes, so no exit path leaves it behind.
pub fn open_arp(
    interface: &str,
    ifindex: u32,
    vip_mac: Option<MacAddr>,
) -> Result<OwnedFd, IoError> {
    let fd = open_listening(
        interface,
        ifindex,
        ETH_P_ARP,
        &super::filter::arp_filter(vip_mac),
    )?;
    if let Some(MacAddr(m)) = vip_mac {
        let mut mreq = libc::packet_mreq {
            mr_ifindex: ifindex as libc::c_int,
            mr_type: libc::PACKET_MR_UNICAST as libc::c_ushort,
            mr_alen: 6,
            mr_address: [0; 8],
        };
        mreq.mr_address[..6].copy_from_slice(&m);
        set_opt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            &mreq,
            "PACKET_ADD_MEMBERSHIP (the VIP MAC)",
            interface,
        )?;
    }
    Ok(fd)
}

/// A probe socket (`uvs doctor`, the through-the-VIP health check): ARP and IPv4 from other
/// hosts. `ETH_P_ALL`, so it also sees the IPv4 frames uvs's ingress rule drops.
pub fn open_probe(interface: &str, ifindex: u32) -> Result<OwnedFd, IoError> {
    open_listening(
        interface,
        ifindex,
        ETH_P_ALL,
        &super::filter::probe_filter(),
    )
}

/// Receive-ring counters since the previous call (the kernel resets them on every read, so
/// exactly one reader — the control thread — may call this).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    pub packets: u64,
    pub drops: u64,
    pub freezes: u64,
}

pub fn take_ring_stats(fd: RawFd) -> std::io::Result<RingStats> {
    let mut st = libc::tpacket_stats_v3 {
        tp_packets: 0,
        tp_drops: 0,
        tp_freeze_q_cnt: 0,
    };
    let mut len = size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
    // SAFETY: `st` is large enough for either stats layout and `len` says how large it is.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut st as *mut libc::tpacket_stats_v3).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // tp_packets counts every frame the socket saw, drops included.
    Ok(RingStats {
        packets: u64::from(st.tp_packets),
        drops: u64::from(st.tp_drops),
        freezes: u64::from(st.tp_freeze_q_cnt),
    })
}

/// Sends one frame on a socket bound to an interface (control-path use: ARP).
pub fn send_frame(fd: RawFd, frame: &[u8]) -> std::io::Result<()> {
    // SAFETY: `frame` is a live slice for the duration of the call.
    let rc = unsafe { libc::send(fd, frame.as_ptr().cast(), frame.len(), libc::MSG_DONTWAIT) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one frame (control-path use: ARP). `Ok(None)` when nothing is waiting.
pub fn recv_frame(fd: RawFd, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    // SAFETY: `buf` is a live, writable slice of the given length.
    let rc = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(rc as usize))
}

/// Waits until any of `fds` is readable or `timeout_ms` passes. Returns false on timeout.
pub fn wait_readable(fds: &mut [libc::pollfd], timeout_ms: i32) -> bool {
    for p in fds.iter_mut() {
        p.revents = 0;
    }
    // SAFETY: `fds` is a live, writable array of pollfd of the given length.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    rc > 0
}
