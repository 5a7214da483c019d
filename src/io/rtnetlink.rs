//! The director's IPv4 routing table, read from the kernel over rtnetlink (`RTM_GETROUTE`
//! dump of the main table), and a socket that says when it changed (`RTMGRP_IPV4_ROUTE`,
//! `RTMGRP_IPV4_IFADDR` and `RTMGRP_LINK` notifications). Routed forwarding methods take their
//! next hops from it; the control thread re-reads it whenever a notification arrives, so the
//! workers never ask the kernel anything per packet.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const NLMSG_HDR_LEN: usize = 16;
const RTMSG_LEN: usize = 12;
const NLMSG_DONE: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const RT_TABLE_MAIN: u8 = 254;

/// One unicast route of the main table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Addr,
    pub prefix_len: u8,
    /// `None`: the destination is on-link.
    pub gateway: Option<Ipv4Addr>,
    /// Output interface index (0 when the route has none, e.g. multipath).
    pub oif: u32,
    pub metric: u32,
    /// The preferred source address (`src` in `ip route`).
    pub prefsrc: Option<Ipv4Addr>,
}

pub(crate) fn nl_socket(groups: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked and owned right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: all-zero is a valid sockaddr_nl.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    sa.nl_groups = groups;
    // SAFETY: `sa` is a valid sockaddr_nl of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

pub(crate) fn recv(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is a live, writable slice of the given length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Every unicast IPv4 route of the main table.
pub fn dump_ipv4_routes() -> io::Result<Vec<Route>> {
    let fd = nl_socket(0)?;
    let mut req = [0u8; NLMSG_HDR_LEN + RTMSG_LEN];
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    req[4..6].copy_from_slice(&libc::RTM_GETROUTE.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[NLMSG_HDR_LEN] = libc::AF_INET as u8;
    // SAFETY: `req` is a live buffer of the length passed.
    let n = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut routes = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, 0)?;
        if n == 0 {
            return Ok(routes);
        }
        match parse_messages(&buf[..n], &mut routes) {
            Parsed::More => {}
            Parsed::Done => return Ok(routes),
            Parsed::Error(errno) => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

enum Parsed {
    More,
    Done,
    Error(i32),
}

/// Parses one datagram of netlink messages, adding the routes it holds.
fn parse_messages(mut b: &[u8], out: &mut Vec<Route>) -> Parsed {
    while b.len() >= NLMSG_HDR_LEN {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        if len < NLMSG_HDR_LEN || len > b.len() {
            return Parsed::Done;
        }
        let body = &b[NLMSG_HDR_LEN..len];
        match kind {
            NLMSG_DONE => return Parsed::Done,
            NLMSG_ERROR => {
                let errno = body
                    .get(0..4)
                    .map(|e| i32::from_ne_bytes([e[0], e[1], e[2], e[3]]))
                    .unwrap_or(0);
                return if errno == 0 {
                    Parsed::Done
                } else {
                    Parsed::Error(-errno)
                };
            }
            libc::RTM_NEWROUTE => {
                if let Some(r) = parse_route(body) {
                    out.push(r);
                }
            }
            _ => {}
        }
        b = &b[len.next_multiple_of(4).min(b.len())..];
    }
    Parsed::More
}

/// An `rtmsg` and its attributes, if it is a unicast IPv4 route of the main table.
fn parse_route(body: &[u8]) -> Option<Route> {
    let rt = body.get(..RTMSG_LEN)?;
    let (family, dst_len, table, kind) = (rt[0], rt[1], rt[4], rt[7]);
    if family != libc::AF_INET as u8 || kind != libc::RTN_UNICAST {
        return None;
    }
    let mut r = Route {
        dst: Ipv4Addr::UNSPECIFIED,
        prefix_len: dst_len,
        gateway: None,
        oif: 0,
        metric: 0,
        prefsrc: None,
    };
    let mut table = u32::from(table);
    let mut attrs = &body[RTMSG_LEN..];
    while attrs.len() >= 4 {
        let alen = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let akind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if alen < 4 || alen > attrs.len() {
            break;
        }
        let v = &attrs[4..alen];
        let addr = || v.get(..4).map(|a| Ipv4Addr::new(a[0], a[1], a[2], a[3]));
        let word = || {
            v.get(..4)
                .map(|a| u32::from_ne_bytes([a[0], a[1], a[2], a[3]]))
        };
        match akind {
            libc::RTA_DST => r.dst = addr()?,
            libc::RTA_GATEWAY => r.gateway = addr(),
            libc::RTA_OIF => r.oif = word()?,
            libc::RTA_PRIORITY => r.metric = word()?,
            libc::RTA_PREFSRC => r.prefsrc = addr(),
            libc::RTA_TABLE => table = word()?,
            _ => {}
        }
        attrs = &attrs[alen.next_multiple_of(4).min(attrs.len())..];
    }
    (table == u32::from(RT_TABLE_MAIN)).then_some(r)
}

/// A socket that becomes readable when routes, addresses or links change.
pub struct RouteWatch {
    fd: OwnedFd,
}

impl RouteWatch {
    pub fn open() -> io::Result<RouteWatch> {
        let groups =
            (libc::RTMGRP_IPV4_ROUTE | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_LINK) as u32;
        let fd = nl_socket(groups)?;
        Ok(RouteWatch { fd })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads every pending notification; `true` if there was any (or the socket overflowed,
    /// which means some were lost: re-read the table either way).
    pub fn changed(&self) -> bool {
        let mut buf = [0u8; 8192];
        let mut any = false;
        loop {
            match recv(self.fd.as_raw_fd(), &mut buf, libc::MSG_DONTWAIT) {
                Ok(0) => return any,
                Ok(_) => any = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return any,
                // ENOBUFS: notifications were dropped.
                Err(_) => return true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, v: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(v);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDR_LEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        m
    }

    fn route_body(dst_len: u8, table: u8, kind: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut b = vec![
            libc::AF_INET as u8,
            dst_len,
            0,
            0,
            table,
            3,
            0,
            kind,
            0,
            0,
            0,
            0,
        ];
        for a in attrs {
            b.extend_from_slice(a);
        }
        b
    }

    #[test]
    fn parses_a_dump_of_default_connected_and_other_table_routes() {
        let mut d = Vec::new();
        d.extend(message(
            libc::RTM_NEWROUTE,
            &route_body(
                0,
                254,
                libc::RTN_UNICAST,
                &[
                    attr(libc::RTA_GATEWAY, &[192, 168, 80, 1]),
                    attr(libc::RTA_OIF, &2u32.to_ne_bytes()),
                ],
            ),
        ));
        d.extend(message(
            libc::RTM_NEWROUTE,
            &route_body(
                24,
                254,
                libc::RTN_UNICAST,
                &[
                    attr(libc::RTA_DST, &[192, 168, 80, 0]),
                    attr(libc::RTA_OIF, &2u32.to_ne_bytes()),
                    attr(libc::RTA_PREFSRC, &[192, 168, 80, 10]),
                    attr(libc::RTA_PRIORITY, &100u32.to_ne_bytes()),
                ],
            ),
        ));
        // Local table and a blackhole: not routes replies can take.
        d.extend(message(
            libc::RTM_NEWROUTE,
            &route_body(
                32,
                255,
                libc::RTN_LOCAL,
                &[attr(libc::RTA_DST, &[192, 168, 80, 10])],
            ),
        ));
        d.extend(message(
            libc::RTM_NEWROUTE,
            &route_body(
                8,
                254,
                libc::RTN_BLACKHOLE,
                &[attr(libc::RTA_DST, &[10, 0, 0, 0])],
            ),
        ));
        d.extend(message(NLMSG_DONE, &[0; 4]));
        let mut out = Vec::new();
        assert!(matches!(parse_messages(&d, &mut out), Parsed::Done));
        assert_eq!(
            out,
            vec![
                Route {
                    dst: Ipv4Addr::UNSPECIFIED,
                    prefix_len: 0,
                    gateway: Some(Ipv4Addr::new(192, 168, 80, 1)),
                    oif: 2,
                    metric: 0,
                    prefsrc: None,
                },
                Route {
                    dst: Ipv4Addr::new(192, 168, 80, 0),
                    prefix_len: 24,
                    gateway: None,
                    oif: 2,
                    metric: 100,
                    prefsrc: Some(Ipv4Addr::new(192, 168, 80, 10)),
                },
            ]
        );
    }

    #[test]
    fn truncated_or_lying_messages_end_the_parse_without_panicking() {
        let m = message(
            libc::RTM_NEWROUTE,
            &route_body(24, 254, libc::RTN_UNICAST, &[]),
        );
        for cut in 0..m.len() {
            let mut out = Vec::new();
            let _ = parse_messages(&m[..cut], &mut out);
        }
        let mut lying = m.clone();
        lying[0..4].copy_from_slice(&9999u32.to_ne_bytes());
        let mut out = Vec::new();
        assert!(matches!(parse_messages(&lying, &mut out), Parsed::Done));
        assert!(out.is_empty());
        let mut bad_attr = route_body(24, 254, libc::RTN_UNICAST, &[]);
        bad_attr.extend_from_slice(&[200, 0, 1, 0]);
        let mut out = Vec::new();
        let _ = parse_messages(&message(libc::RTM_NEWROUTE, &bad_attr), &mut out);
        assert_eq!(out.len(), 1, "the route before the bad attribute is kept");
    }

    #[test]
    fn dumps_this_namespace_without_error() {
        // Whatever the machine's routes are, a dump must parse; as root in a fresh namespace
        // the table is empty, which is fine too.
        assert!(dump_ipv4_routes().is_ok());
    }
}
