//! The announcement device: a TUN device uvs creates and holds open, whose IPv4 addresses
//! are the VIPs this director announces. The routing daemon on the director (BIRD's
//! `protocol direct`, FRR's `redistribute connected`) sees each address as a connected /32
//! and exports it over BGP; uvs never speaks BGP.
//!
//! Why a device and not a route, or `birdc`: the device is not persistent, so the kernel
//! deletes it, addresses included, when its last descriptor closes, which happens whenever
//! uvs exits: SIGKILL, OOM kill and abort included. Both daemons learn of it at once
//! (RTM_DELLINK / RTM_DELADDR) and withdraw the VIPs: measured here, the router had stopped
//! using a killed director 0.1 s later. A route in a table of its own would vanish with the
//! device too, and BIRD notices that, but the kernel sends no RTM_DELROUTE for IPv4 routes
//! flushed with their device and FRR's zebra keeps such a route forever, so uvs does not
//! rely on route notifications. Driving `birdc` from uvs would withdraw nothing after a
//! SIGKILL.
//!
//! Nothing is ever read from or written to the device; no route points into it, so the
//! kernel sends it nothing but its own rare IPv6 chatter, which is turned off.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::rtnetlink::{nl_socket, recv};

/// linux/if_tun.h
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

const NLMSG_HDR_LEN: usize = 16;
/// `struct ifaddrmsg`.
const IFADDRMSG_LEN: usize = 8;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// The device and the netlink socket its addresses are changed through.
#[derive(Debug)]
pub struct AnnounceDevice {
    name: String,
    index: u32,
    /// Holding it keeps the device in existence.
    _tun: OwnedFd,
    netlink: OwnedFd,
    seq: u32,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// An interface name the kernel accepts: 1..=15 bytes, no `/`, whitespace or NUL, not `.`/`..`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(format!("interface name {name:?} must be 1..=15 bytes"));
    }
    if name.contains(['/', ' ', '\t', '\n', '\0', ':']) || name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    Ok(())
}

fn ifreq_named(name: &str) -> io::Result<libc::ifreq> {
    check_name(name).map_err(invalid)?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(req)
}

impl AnnounceDevice {
    /// Creates the TUN device `name` (refused if an interface of that name exists: a device
    /// uvs did not create would outlive it), turns IPv6 off on it and sets it up.
    pub fn create(name: &str) -> io::Result<AnnounceDevice> {
        check_name(name).map_err(invalid)?;
        // By index, not /sys/class/net: sysfs shows the namespace it was mounted in.
        if super::socket::if_index(name).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "interface {name} exists already: uvs creates its announcement device itself, \
                     so that it vanishes with uvs (remove it with `ip link del {name}`, or name \
                     another one in [announce] device)"
                ),
            ));
        }
        // SAFETY: a constant NUL-terminated path; the result is checked.
        let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "cannot open /dev/net/tun: {e} (the tun module; under systemd, \
                     PrivateDevices=yes hides it: docs/scale-out.md has the drop-in)"
                ),
            ));
        }
        // SAFETY: `raw` was just opened and is owned here alone.
        let tun = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = ifreq_named(name)?;
        req.ifr_ifru.ifru_flags = IFF_TUN | IFF_NO_PI;
        // SAFETY: TUNSETIFF reads the name and flags from the request, which lives across the
        // call. A new device made this way is not persistent: it goes with `tun`.
        if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("cannot create TUN device {name}: {e}"),
            ));
        }
        // No link-local address, router solicitations or MLD reports queued on a device
        // nobody reads. Absent when the kernel has no IPv6.
        let v6 = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
        if let Err(e) = std::fs::write(&v6, "1")
            && e.kind() != io::ErrorKind::NotFound
        {
            log::debug!("{v6}: {e}");
        }
        set_up(name)?;
        let index = super::socket::if_index(name).map_err(io::Error::other)?;
        Ok(AnnounceDevice {
            name: name.to_string(),
            index,
            _tun: tun,
            netlink: nl_socket(0)?,
            seq: 0,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Moves the device to the process's highest descriptor number, so that a dying uvs
    /// releases it first. Why: the files of an exiting process are released in reverse
    /// order of their numbers (the deferred `fput`s are a last-in first-out task list), and
    /// releasing a packet socket or the nftables socket waits for RCU grace periods. With the
    /// device on descriptor 4, behind them, a SIGKILLed uvs kept its VIPs on the device for
    /// 0.5 to 2.5 s on a busy machine. Call it once every socket is open.
    pub fn release_first_on_exit(&mut self) -> io::Result<()> {
        let top = std::fs::read_dir("/proc/self/fd")?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::c_int>().ok())
            .max()
            .unwrap_or(0);
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own; the result is checked and owned.
        let fd = unsafe { libc::fcntl(self._tun.as_raw_fd(), libc::F_DUPFD_CLOEXEC, top + 1) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh duplicate nobody else owns. The old descriptor is closed
        // when replaced; the device lives on through the new one.
        self._tun = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(())
    }

    /// Adds `vip/32` (scope global) to the device. Adding one it holds already is no error.
    pub fn add(&mut self, vip: Ipv4Addr) -> io::Result<()> {
        let flags = libc::NLM_F_CREATE | libc::NLM_F_REPLACE;
        match self.address_request(libc::RTM_NEWADDR, flags, vip) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r,
        }
    }

    /// Removes `vip/32` from the device. Removing one it does not hold is no error.
    pub fn remove(&mut self, vip: Ipv4Addr) -> io::Result<()> {
        match self.address_request(libc::RTM_DELADDR, 0, vip) {
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
            r => r,
        }
    }

    fn address_request(&mut self, kind: u16, flags: libc::c_int, vip: Ipv4Addr) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = Vec::with_capacity(NLMSG_HDR_LEN + IFADDRMSG_LEN + 16);
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK | flags) as u16;
        header(&mut msg, kind, flags, self.seq);
        msg.push(libc::AF_INET as u8);
        msg.push(32); // prefix length
        msg.push(0); // flags
        msg.push(0); // RT_SCOPE_UNIVERSE: a host-scope address is not exported by BIRD
        msg.extend_from_slice(&self.index.to_ne_bytes());
        for kind in [IFA_LOCAL, IFA_ADDRESS] {
            msg.extend_from_slice(&8u16.to_ne_bytes());
            msg.extend_from_slice(&kind.to_ne_bytes());
            msg.extend_from_slice(&vip.octets());
        }
        finish(&mut msg);
        self.send(&msg)?;
        self.await_ack()
    }

    /// The IPv4 addresses the device holds, as the kernel reports them.
    pub fn addresses(&mut self) -> io::Result<Vec<Ipv4Addr>> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = Vec::with_capacity(NLMSG_HDR_LEN + IFADDRMSG_LEN);
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        header(&mut msg, libc::RTM_GETADDR, flags, self.seq);
        msg.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
        msg.extend_from_slice(&0u32.to_ne_bytes());
        finish(&mut msg);
        self.send(&msg)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = recv(self.netlink.as_raw_fd(), &mut buf, 0)?;
            if n == 0 {
                return Ok(out);
            }
            match parse_addresses(&buf[..n], self.index, &mut out) {
                Dump::More => {}
                Dump::Done => return Ok(out),
                Dump::Error(errno) => return Err(io::Error::from_raw_os_error(errno)),
            }
        }
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: `msg` is a live buffer of the length passed.
        let n = unsafe { libc::send(self.netlink.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits for the kernel's answer to the request just sent (`NLMSG_ERROR`, 0 = done).
    fn await_ack(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        loop {
            let n = recv(self.netlink.as_raw_fd(), &mut buf, 0)?;
            let mut b = &buf[..n];
            while b.len() >= NLMSG_HDR_LEN {
                let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
                let kind = u16::from_ne_bytes([b[4], b[5]]);
                let seq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
                if len < NLMSG_HDR_LEN || len > b.len() {
                    break;
                }
                if kind == NLMSG_ERROR && seq == self.seq && len >= NLMSG_HDR_LEN + 4 {
                    let p = &b[NLMSG_HDR_LEN..];
                    let errno = -i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
                    return if errno == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(errno))
                    };
                }
                b = &b[align(len).min(b.len())..];
            }
        }
    }
}

/// Sets an interface up (`ip link set NAME up`).
fn set_up(name: &str) -> io::Result<()> {
    let mut req = ifreq_named(name)?;
    // SAFETY: plain syscall with constant arguments; the result is checked.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `s` was just opened and is owned here alone.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: SIOCGIFFLAGS fills the flags of the named interface into the live request.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled `ifru_flags` just above.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the live request.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

fn header(msg: &mut Vec<u8>, kind: u16, flags: u16, seq: u32) {
    msg.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
}

fn finish(msg: &mut [u8]) {
    let len = msg.len() as u32;
    msg[0..4].copy_from_slice(&len.to_ne_bytes());
}

enum Dump {
    More,
    Done,
    Error(i32),
}

/// Parses one datagram of an `RTM_GETADDR` dump, keeping the IPv4 addresses of `index`.
fn parse_addresses(mut b: &[u8], index: u32, out: &mut Vec<Ipv4Addr>) -> Dump {
    while b.len() >= NLMSG_HDR_LEN {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        if len < NLMSG_HDR_LEN || len > b.len() {
            return Dump::Done;
        }
        match kind {
            NLMSG_DONE => return Dump::Done,
            NLMSG_ERROR => {
                let p = &b[NLMSG_HDR_LEN..len];
                let errno = p
                    .get(..4)
                    .map_or(0, |e| -i32::from_ne_bytes([e[0], e[1], e[2], e[3]]));
                return if errno == 0 {
                    Dump::Done
                } else {
                    Dump::Error(errno)
                };
            }
            k if k == libc::RTM_NEWADDR => {
                if let Some(a) = parse_address(&b[NLMSG_HDR_LEN..len], index) {
                    out.push(a);
                }
            }
            _ => {}
        }
        b = &b[align(len).min(b.len())..];
    }
    Dump::More
}

fn parse_address(body: &[u8], index: u32) -> Option<Ipv4Addr> {
    if body.len() < IFADDRMSG_LEN || body[0] != libc::AF_INET as u8 {
        return None;
    }
    if u32::from_ne_bytes([body[4], body[5], body[6], body[7]]) != index {
        return None;
    }
    let mut attrs = &body[IFADDRMSG_LEN..];
    let mut found = None;
    while attrs.len() >= 4 {
        let alen = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let akind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if alen < 4 || alen > attrs.len() {
            break;
        }
        let v = &attrs[4..alen];
        if v.len() == 4 && (akind == IFA_LOCAL || (akind == IFA_ADDRESS && found.is_none())) {
            found = Some(Ipv4Addr::new(v[0], v[1], v[2], v[3]));
        }
        attrs = &attrs[align(alen).min(attrs.len())..];
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn names_the_kernel_would_refuse_are_refused() {
        assert!(check_name("uvs-announce").is_ok());
        for bad in [
            "",
            "a-name-longer-than-15",
            "a/b",
            "a b",
            ".",
            "..",
            "eth0:1",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_addresses_of_one_interface_only() {
        let msg = |index: u32, a: [u8; 4]| {
            let mut m = Vec::new();
            header(&mut m, libc::RTM_NEWADDR, 0, 1);
            m.extend_from_slice(&[libc::AF_INET as u8, 32, 0, 0]);
            m.extend_from_slice(&index.to_ne_bytes());
            m.extend_from_slice(&8u16.to_ne_bytes());
            m.extend_from_slice(&IFA_LOCAL.to_ne_bytes());
            m.extend_from_slice(&a);
            finish(&mut m);
            m
        };
        let mut all = msg(7, [10, 0, 0, 1]);
        all.extend(msg(8, [10, 0, 0, 2]));
        all.extend(msg(7, [10, 0, 0, 3]));
        let mut out = Vec::new();
        assert!(matches!(parse_addresses(&all, 7, &mut out), Dump::More));
        assert_eq!(
            out,
            vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 3)]
        );
        // A lying length ends the parse without a panic.
        let mut bad = msg(7, [10, 0, 0, 4]);
        bad[0] = 200;
        assert!(matches!(parse_addresses(&bad, 7, &mut out), Dump::Done));
    }

    /// In a network namespace of the test's own: the device appears with the addresses given,
    /// they come and go, and the device (with them) is gone once the handle is dropped.
    #[test]
    fn the_device_holds_the_vips_and_vanishes_with_its_handle() {
        let t = std::thread::spawn(|| {
            if !crate::io::enter_private_netns() || !Path::new("/dev/net/tun").exists() {
                eprintln!("skipping: needs root and /dev/net/tun");
                return;
            }
            let vip = Ipv4Addr::new(10, 9, 0, 100);
            let vip2 = Ipv4Addr::new(10, 9, 0, 101);
            let mut d = AnnounceDevice::create("uvs-test0").expect("device");
            assert!(crate::io::socket::if_index("uvs-test0").is_ok());
            d.add(vip).unwrap();
            d.add(vip).unwrap(); // again: no error
            d.add(vip2).unwrap();
            let mut got = d.addresses().unwrap();
            got.sort();
            assert_eq!(got, vec![vip, vip2]);
            d.remove(vip).unwrap();
            d.remove(vip).unwrap(); // again: no error
            assert_eq!(d.addresses().unwrap(), vec![vip2]);
            // Moved to the top descriptor: still the same device, addresses and all.
            d.release_first_on_exit().unwrap();
            assert_eq!(d.addresses().unwrap(), vec![vip2]);
            // A second one of the same name is refused while the first exists.
            let e = AnnounceDevice::create("uvs-test0").unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
            drop(d);
            assert!(crate::io::socket::if_index("uvs-test0").is_err());
        });
        t.join().unwrap();
    }
}
