//! The daemon side of the admin socket: accept, read one request, authorise it from the
//! peer's credentials, hand it to the control thread's handler, write one reply.
//!
//! Authorisation follows ipvsadm: the kernel's IPVS control calls require CAP_NET_ADMIN, so
//! changing anything requires root or CAP_NET_ADMIN in the peer's effective set. Reading
//! (`-L`) is allowed to anyone: it changes nothing and teaching labs run it unprivileged.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

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

/// Serves one connection: one request, one reply. Bad or oversize requests get an error reply;
/// nothing the peer sends can take the daemon down.
pub fn serve(stream: UnixStream, handle: &mut dyn FnMut(Request) -> Reply) {
    serve_or_stream(stream, handle, &mut |_, mut s| {
        let _ = write_frame(&mut s, &refused("this daemon does not stream"));
    });
}

/// Like [`serve`], but an authorised streaming request (`Request::Trace`) is handed, with the
/// connection, to `stream_to`, which replies and keeps the connection.
pub fn serve_or_stream(
    mut stream: UnixStream,
    handle: &mut dyn FnMut(Request) -> Reply,
    stream_to: &mut dyn FnMut(super::proto::TraceRequest, UnixStream),
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let peer = match peer_of(&stream) {
        Ok(p) => p,
        Err(e) => {
            let _ = write_frame(
                &mut stream,
                &refused(format!("cannot read peer credentials: {e}")),
            );
            return;
        }
    };
    let reply = match read_frame::<Request>(&mut stream, MAX_REQUEST) {
        Ok(req) => {
            let changes = matches!(
                req,
                Request::Apply(_) | Request::Zero(_) | Request::Trace(_) | Request::SyncDaemon(_)
            );
            if changes && !peer.may_change {
                log::warn!(
                    "refused a change from uid {} (pid {}): needs root or CAP_NET_ADMIN",
                    peer.uid,
                    peer.pid
                );
                refused("Permission denied (you must be root or have CAP_NET_ADMIN)")
            } else if let Request::Trace(t) = req {
                stream_to(t, stream);
                return;
            } else {
                handle(req)
            }
        }
        Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return,
        Err(e) => refused(format!("bad request: {e}")),
    };
    let _ = write_frame(&mut stream, &reply);
    let _ = stream.flush();
}
