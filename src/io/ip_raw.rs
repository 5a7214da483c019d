//! Raw IPv4 sockets for one protocol on one interface (VRRP's adverts): bound to the
//! interface and to our address on it, optionally member of a multicast group there, a fixed
//! TTL for unicast and multicast, multicast loop off (our own packets are not read back),
//! non-blocking. The kernel builds the IP header; received packets come with theirs (raw IPv4
//! sockets always deliver it). Plus the one multicast option the sync daemon's UDP socket
//! needs.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// What a [`RawIpSocket`] is for.
#[derive(Clone, Copy, Debug)]
pub struct RawIpOptions<'a> {
    pub interface: &'a str,
    pub ifindex: u32,
    /// Our address on the interface: the source of what we send.
    pub source: Ipv4Addr,
    pub protocol: u8,
    pub ttl: u8,
    pub tos: u8,
    /// Join this group on the interface and send multicast out of it.
    pub group: Option<Ipv4Addr>,
}

pub struct RawIpSocket {
    /// Unbound: a raw socket bound to an address only receives packets *to* that address,
    /// which would filter out 224.0.0.18.
    fd: OwnedFd,
    /// Bound to our address, so adverts leave with it as source (the v3 checksum covers it);
    /// never read (its receive buffer is minimal).
    tx: OwnedFd,
}

fn check(rc: libc::c_int, what: &str) -> io::Result<()> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn setopt<T>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: &T,
    what: &str,
) -> io::Result<()> {
    // SAFETY: `v` points to a live, initialised value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    check(rc, what)
}

fn sockaddr(a: Ipv4Addr) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
    let mut s: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_addr.s_addr = u32::from(a).to_be();
    s
}

impl RawIpSocket {
    pub fn open(o: &RawIpOptions<'_>) -> io::Result<RawIpSocket> {
        let fd = Self::open_one(o, false)?;
        let tx = Self::open_one(o, true)?;
        let small: libc::c_int = 1;
        setopt(
            tx.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &small,
            "SO_RCVBUF",
        )?;
        Ok(RawIpSocket { fd, tx })
    }

    fn open_one(o: &RawIpOptions<'_>, bind: bool) -> io::Result<OwnedFd> {
        // SAFETY: plain syscall; the result is checked and owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::c_int::from(o.protocol),
            )
        };
        check(raw, "socket(AF_INET, SOCK_RAW)")?;
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let f = fd.as_raw_fd();
        let name = std::ffi::CString::new(o.interface).map_err(io::Error::other)?;
        let bytes = name.as_bytes_with_nul();
        // SAFETY: the pointer and length describe the NUL-terminated name.
        let rc = unsafe {
            libc::setsockopt(
                f,
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                bytes.as_ptr().cast(),
                bytes.len() as libc::socklen_t,
            )
        };
        check(rc, "SO_BINDTODEVICE")?;
        let ttl: libc::c_int = libc::c_int::from(o.ttl);
        setopt(f, libc::IPPROTO_IP, libc::IP_TTL, &ttl, "IP_TTL")?;
        setopt(
            f,
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_TTL,
            &ttl,
            "IP_MULTICAST_TTL",
        )?;
        let off: libc::c_int = 0;
        setopt(
            f,
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_LOOP,
            &off,
            "IP_MULTICAST_LOOP",
        )?;
        let tos: libc::c_int = libc::c_int::from(o.tos);
        setopt(f, libc::IPPROTO_IP, libc::IP_TOS, &tos, "IP_TOS")?;
        if bind {
            let sa = sockaddr(o.source);
            // SAFETY: `sa` is a valid sockaddr_in of the size passed.
            let rc = unsafe {
                libc::bind(
                    f,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            check(rc, "bind to the interface address")?;
        }
        if let Some(group) = o.group {
            let mreq = libc::ip_mreqn {
                imr_multiaddr: libc::in_addr {
                    s_addr: u32::from(group).to_be(),
                },
                imr_address: libc::in_addr {
                    s_addr: u32::from(o.source).to_be(),
                },
                imr_ifindex: o.ifindex as libc::c_int,
            };
            setopt(
                f,
                libc::IPPROTO_IP,
                libc::IP_MULTICAST_IF,
                &mreq,
                "IP_MULTICAST_IF",
            )?;
            if !bind {
                setopt(
                    f,
                    libc::IPPROTO_IP,
                    libc::IP_ADD_MEMBERSHIP,
                    &mreq,
                    "IP_ADD_MEMBERSHIP",
                )?;
            }
        }
        Ok(fd)
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn send_to(&self, msg: &[u8], dst: Ipv4Addr) -> io::Result<()> {
        let sa = sockaddr(dst);
        // SAFETY: buffer and address are valid for the lengths passed.
        let rc = unsafe {
            libc::sendto(
                self.tx.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One received IPv4 packet (header included), or `None` when nothing is pending.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: `buf` is valid for writes of its length.
        let rc = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(rc as usize))
    }
}

/// Sends the socket's multicast out of interface `ifindex`, from `source`
/// (`IP_MULTICAST_IF`).
pub fn set_multicast_interface(
    sock: &impl AsRawFd,
    ifindex: u32,
    source: Ipv4Addr,
) -> io::Result<()> {
    let mreq = libc::ip_mreqn {
        imr_multiaddr: libc::in_addr { s_addr: 0 },
        imr_address: libc::in_addr {
            s_addr: u32::from(source).to_be(),
        },
        imr_ifindex: ifindex as libc::c_int,
    };
    setopt(
        sock.as_raw_fd(),
        libc::IPPROTO_IP,
        libc::IP_MULTICAST_IF,
        &mreq,
        "IP_MULTICAST_IF",
    )
}
