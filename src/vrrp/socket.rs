//! The VRRP socket: raw IPv4, protocol 112, bound to one interface and to our address on it,
//! member of 224.0.0.18 there when the instance uses multicast, TTL 255 (RFC 5798 §5.1.1.3:
//! a receiver drops adverts with any other TTL, which is where ours is checked), multicast
//! loop off (our own adverts are not read back), internetwork-control TOS as keepalived sends
//! them, non-blocking. The socket itself lives in `crate::io::ip_raw`.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;

use super::packet::{IPPROTO_VRRP, VRRP_GROUP, VRRP_TTL};
use crate::io::ip_raw::{RawIpOptions, RawIpSocket};

/// Internetwork control (IP precedence 6), as keepalived sends adverts.
const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;

pub struct VrrpSocket(RawIpSocket);

impl VrrpSocket {
    pub fn open(
        ifname: &str,
        ifindex: u32,
        source: Ipv4Addr,
        multicast: bool,
    ) -> io::Result<VrrpSocket> {
        RawIpSocket::open(&RawIpOptions {
            interface: ifname,
            ifindex,
            source,
            protocol: IPPROTO_VRRP,
            ttl: VRRP_TTL,
            tos: TOS_INTERNETWORK_CONTROL,
            group: multicast.then_some(VRRP_GROUP),
        })
        .map(VrrpSocket)
    }

    pub fn raw_fd(&self) -> RawFd {
        self.0.raw_fd()
    }

    pub fn send_to(&self, msg: &[u8], dst: Ipv4Addr) -> io::Result<()> {
        self.0.send_to(msg, dst)
    }

    /// One received IPv4 packet (header included), or `None` when nothing is pending.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        self.0.recv(buf)
    }
}
