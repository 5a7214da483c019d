//! What the tunnel endpoint (the lab's stand-in for a real server's `tunl0`) needs from the
//! kernel: a TUN device to hand decapsulated packets to the local IP stack, a packet socket
//! that receives the tunnel's frames with their offload header, and "sink" sockets that claim
//! IPIP, GRE and GUE's UDP port so the kernel does not answer them with ICMP unreachable.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::filter::{Insn, drop_all, tunnel_endpoint_filter};
use super::socket::{attach_filter, if_index};
use super::{IoError, sys_err};

/// linux/if_tun.h
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const ETH_P_IP: u16 = 0x0800;

fn ifreq_named(name: &str) -> std::io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("interface name {name:?} must be 1..15 bytes"),
        ));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(req)
}

/// Creates (or attaches to) the TUN device `name`: layer-3 packets, no packet-info prefix.
/// The device lives as long as the returned descriptor.
pub fn open_tun(name: &str) -> std::io::Result<OwnedFd> {
    let mut req = ifreq_named(name)?;
    req.ifr_ifru.ifru_flags = IFF_TUN | IFF_NO_PI;
    // SAFETY: a constant NUL-terminated path.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned here alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: TUNSETIFF reads the name and flags from the request, which lives across the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Sets an interface up (`ip link set NAME up`).
pub fn set_up(name: &str) -> std::io::Result<()> {
    let mut req = ifreq_named(name)?;
    // SAFETY: plain syscall with constant arguments.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `s` was just opened and is owned here alone.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: SIOCGIFFLAGS fills the flags of the named interface into the live request.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel filled `ifru_flags` just above.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the live request.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Writes one IP packet into a TUN device (the local stack receives it as from the device).
pub fn write_packet(fd: RawFd, packet: &[u8]) -> std::io::Result<()> {
    // SAFETY: `packet` is a live slice for the duration of the call.
    let rc = unsafe { libc::write(fd, packet.as_ptr().cast(), packet.len()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A packet socket on `interface` receiving the tunnel frames addressed to this host (see
/// `filter::tunnel_endpoint_filter`), each preceded by its `virtio_net_hdr`: a checksum
/// offloaded by the sender is still partial, and the header says where.
pub fn open_endpoint_rx(interface: &str, gue_port: u16) -> Result<OwnedFd, IoError> {
    let ifindex = if_index(interface)?;
    // SAFETY: plain syscall with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(sys_err("socket(AF_PACKET)", interface));
    }
    // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = fd.as_raw_fd();
    let one: libc::c_int = 1;
    super::socket::set_opt(
        raw,
        libc::SOL_PACKET,
        libc::PACKET_VNET_HDR,
        &one,
        "PACKET_VNET_HDR",
        interface,
    )?;
    attach_filter(raw, &tunnel_endpoint_filter(gue_port), interface)?;
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_IP.to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: `sll` is a valid sockaddr_ll and the length matches it.
    let rc = unsafe {
        libc::bind(
            raw,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(sys_err("bind", interface));
    }
    Ok(fd)
}

/// Blocks until one frame arrives (or `timeout_ms` passes: `Ok(None)`).
pub fn recv_timeout(fd: RawFd, buf: &mut [u8], timeout_ms: i32) -> std::io::Result<Option<usize>> {
    let mut p = [libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }];
    if !super::socket::wait_readable(&mut p, timeout_ms) {
        return Ok(None);
    }
    super::socket::recv_frame(fd, buf)
}

/// A raw IP socket for `protocol` that keeps nothing (a filter drops every packet): its
/// existence is what tells the kernel the protocol is handled, so it sends no ICMP protocol
/// unreachable for it.
pub fn open_protocol_sink(protocol: u8) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall with constant arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::c_int::from(protocol),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    attach_sink_filter(fd.as_raw_fd())?;
    Ok(fd)
}

/// A UDP socket bound to `port` that keeps nothing: no ICMP port unreachable for GUE.
pub fn open_udp_sink(port: u16) -> std::io::Result<UdpSocket> {
    let s = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))?;
    attach_sink_filter(s.as_raw_fd())?;
    Ok(s)
}

fn attach_sink_filter(fd: RawFd) -> std::io::Result<()> {
    let prog: Vec<Insn> = drop_all();
    attach_filter(fd, &prog, "sink").map_err(|e| std::io::Error::other(e.to_string()))
}

/// A raw ICMP socket: reads every ICMP message addressed to this host (with its IP header),
/// and sends ICMP messages the kernel routes and gives a header and source address.
pub fn open_icmp_raw() -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall with constant arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends one ICMP message (header and body, checksum set) to `dst` on a raw ICMP socket.
pub fn send_icmp(fd: RawFd, message: &[u8], dst: Ipv4Addr) -> std::io::Result<()> {
    // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_addr.s_addr = u32::from(dst).to_be();
    // SAFETY: `message` and `sa` are live for the call; the length matches `sa`.
    let rc = unsafe {
        libc::sendto(
            fd,
            message.as_ptr().cast(),
            message.len(),
            libc::MSG_DONTWAIT,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
