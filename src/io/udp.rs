//! UDP with the destination address of each datagram (`IP_PKTINFO`): a server bound to
//! 0.0.0.0 that must answer from the address it was asked on (a DR real server answering from
//! the VIP on `lo`).

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

/// Asks the kernel to report each datagram's destination address.
pub fn enable_pktinfo(sock: &UdpSocket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `on` is a live c_int and the length passed matches it.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Control buffer big enough for one `in_pktinfo`, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

/// Receives one datagram: its sender, and the local address it was sent to (with
/// [`enable_pktinfo`] on; `None` otherwise).
pub fn recv_with_destination(
    sock: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddrV4, Option<Ipv4Addr>)> {
    let fd = sock.as_raw_fd();
    // SAFETY: all-zero is a valid sockaddr_in / msghdr; the kernel fills them.
    let mut peer: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = CmsgBuf([0; 64]);
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut peer as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = cbuf.0.len();
    // SAFETY: every pointer in `msg` refers to a live local buffer with the stated length.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut info = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel just filled, bounded by
    // msg_controllen; the payload of an IP_PKTINFO cmsg is an in_pktinfo (read unaligned).
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_PKTINFO {
                info = Some(std::ptr::read_unaligned(
                    libc::CMSG_DATA(c).cast::<libc::in_pktinfo>(),
                ));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let addr = SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(peer.sin_addr.s_addr)),
        u16::from_be(peer.sin_port),
    );
    let local = info.map(|i: libc::in_pktinfo| Ipv4Addr::from(u32::from_be(i.ipi_addr.s_addr)));
    Ok((n as usize, addr, local))
}

/// Sends `data` to `peer` from local address `local` (the routing table picks the way out);
/// `None`: from whatever address the routing table picks.
pub fn send_from(
    sock: &UdpSocket,
    data: &[u8],
    peer: SocketAddrV4,
    local: Option<Ipv4Addr>,
) -> io::Result<()> {
    let fd = sock.as_raw_fd();
    let mut dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: peer.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*peer.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut cbuf = CmsgBuf([0; 64]);
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut dst as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(src) = local {
        // Source address only; ifindex 0 lets routing pick the way out.
        let pi = libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from(src).to_be(),
            },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        // SAFETY: CMSG_SPACE of one in_pktinfo (32 bytes) fits the 64-byte aligned buffer; the
        // header and payload are written through the CMSG_* pointers inside it.
        unsafe {
            msg.msg_control = cbuf.0.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::IPPROTO_IP;
            (*c).cmsg_type = libc::IP_PKTINFO;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>(), pi);
        }
    }
    // SAFETY: `msg` points at live locals (dst, iov→data, cbuf) for the duration of the call.
    let n = unsafe { libc::sendmsg(fd, &msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
