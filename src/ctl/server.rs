//! The daemon side of the admin socket: accept, read one request, authorise it from the
//! peer's credentials, hand it to the control thread's handler, write one reply.
//!
//! Authorisation follows ipvsadm: the kernel's IPVS control calls require CAP_NET_ADMIN, so
//! changing anything requires root or CAP_NET_ADMIN in the peer's effective set. Reading
//! (`-L`) is allowed to anyone: it changes nothing and teaching labs run it unprivileged.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use super::apply::EXIT_REFUSED;
use super::proto::{
    ADMIN_SOCKET_NAME, FrameError, MAX_REQUEST, Refusal, Reply, Request, read_frame, write_frame,
};

/// Who is asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub may_change: bool,
}

const CAP_NET_ADMIN: u32 = 12;

/// Reads the peer's credentials and whether it holds CAP_NET_ADMIN (root, or the capability
/// in its effective set per /proc/PID/status).
pub fn peer_of(stream: &UnixStream) -> io::Result<Peer> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a writable ucred and `len` its size.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let cap = std::fs::read_to_string(format!("/proc/{}/status", cred.pid))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0);
    Ok(Peer {
        pid: cred.pid,
        uid: cred.uid,
        may_change: cred.uid == 0 || cap,
    })
}

/// Binds the admin socket: the abstract name, or a filesystem path.
pub fn bind(path: Option<&Path>) -> io::Result<UnixListener> {
    let l = match path {
        None => UnixListener::bind_addr(&SocketAddr::from_abstract_name(ADMIN_SOCKET_NAME)?)?,
        Some(p) => {
            // A stale socket file from a killed daemon would make bind fail.
            let _ = std::fs::remove_file(p);
            UnixListener::bind(p)?
        }
    };
    l.set_nonblocking(true)?;
    Ok(l)
}

fn refused(message: impl Into<String>) -> Reply {
    Reply::Refused(Refusal {
        message: message.into(),
        change: None,
        exit_code: EXIT_REFUSED,
    })
}

/// Longest time a peer gets to deliver its whole request. The control thread serves the admin
/// socket between ARP and metrics work, so this bounds how long one client can hold it; a real
/// client writes its request at once (an 8 MB `-R` crosses a Unix socket in milliseconds).
pub const REQUEST_DEADLINE: Duration = Duration::from_millis(500);
/// Longest time a peer gets to take its whole reply.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(2);

/// A stream whose reads or writes must all finish before one deadline. A per-call socket
/// timeout alone lets a peer that trickles one byte per timeout hold the reader forever.
struct Deadline<'a> {
    stream: &'a UnixStream,
    until: Instant,
}

impl Deadline<'_> {
    fn remaining(&self) -> io::Result<Duration> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer was too slow (deadline passed)",
            ));
        }
        Ok(left)
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.remaining()?))?;
        (&mut &*self.stream).read(buf)
    }
}

impl Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.remaining()?))?;
        (&mut &*self.stream).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Serves one connection: one request, one reply. Bad or oversize requests get an error reply;
/// nothing the peer sends can take the daemon down, and no peer holds it longer than
/// [`REQUEST_DEADLINE`] + [`REPLY_DEADLINE`].
pub fn serve(stream: UnixStream, handle: &mut dyn FnMut(Request) -> Reply) {
    let _ = stream.set_nonblocking(false);
    let mut reader = Deadline {
        stream: &stream,
        until: Instant::now() + REQUEST_DEADLINE,
    };
    let writer = |reply: &Reply| {
        let mut w = Deadline {
            stream: &stream,
            until: Instant::now() + REPLY_DEADLINE,
        };
        let _ = write_frame(&mut w, reply);
    };
    let peer = match peer_of(&stream) {
        Ok(p) => p,
        Err(e) => {
            writer(&refused(format!("cannot read peer credentials: {e}")));
            return;
        }
    };
    let reply = match read_frame::<Request>(&mut reader, MAX_REQUEST) {
        Ok(req) => {
            let changes = matches!(req, Request::Apply(_) | Request::Zero(_));
            if changes && !peer.may_change {
                log::warn!(
                    "refused a change from uid {} (pid {}): needs root or CAP_NET_ADMIN",
                    peer.uid,
                    peer.pid
                );
                refused("Permission denied (you must be root or have CAP_NET_ADMIN)")
            } else {
                handle(req)
            }
        }
        Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return,
        Err(e) => refused(format!("bad request: {e}")),
    };
    writer(&reply);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::proto::MAX_REPLY;

    #[test]
    fn a_peer_trickling_its_request_is_cut_off_at_the_deadline() {
        let (daemon, mut client) = UnixStream::pair().unwrap();
        let trickle = std::thread::spawn(move || {
            // A 4-byte length claiming 100 bytes, then one byte every 100 ms: each read
            // returns well within any per-call timeout.
            let _ = client.write_all(&100u32.to_be_bytes());
            for _ in 0..40 {
                if client.write_all(b" ").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            read_frame::<Reply>(&mut client, MAX_REPLY)
        });
        let t0 = Instant::now();
        let mut called = false;
        serve(daemon, &mut |_| {
            called = true;
            Reply::Done
        });
        let took = t0.elapsed();
        assert!(!called);
        assert!(
            took < REQUEST_DEADLINE + Duration::from_millis(300),
            "held for {took:?}"
        );
        match trickle.join().unwrap() {
            Ok(Reply::Refused(r)) => assert!(r.message.contains("bad request"), "{r:?}"),
            other => panic!("{other:?}"),
        }
    }
}
