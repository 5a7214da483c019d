//! The daemon side of the admin socket: accept, read one request, authorise it from the
//! peer's credentials, hand it to the control thread's handler, write one reply.
//!
//! Authorisation follows ipvsadm: the kernel's IPVS control calls require CAP_NET_ADMIN, so
//! changing anything requires root or CAP_NET_ADMIN in the peer's effective set. Reading
//! (`-L`) is allowed to anyone: it changes nothing and teaching labs run it unprivileged.

use std::io::{self, Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use super::proto::{
    ADMIN_SOCKET_NAME, FrameError, MAX_REQUEST, Refusal, Reply, Request, read_frame, write_frame,
};
use super::proto::{AnnounceCommand, EXIT_REFUSED};

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
    let cred = crate::io::unix::peer_credentials(stream)?;
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

/// The abstract Unix socket name that marks "a uvs serves this network namespace" (abstract
/// names are per namespace and vanish with the process, so a killed instance leaves no lock).
pub const INSTANCE_LOCK: &[u8] = b"uvs/instance";

/// Takes the instance lock; `AddrInUse` while another uvs holds it.
pub fn instance_lock() -> io::Result<UnixListener> {
    UnixListener::bind_addr(&SocketAddr::from_abstract_name(INSTANCE_LOCK)?)
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

/// Serves one connection: one request, one reply, blocking until the request is read (at most
/// [`REQUEST_DEADLINE`]). Bad or oversize requests get an error reply; nothing the peer sends
/// can take the daemon down. The daemon itself uses [`AdminConns`], which never waits for a
/// peer's request.
pub fn serve(stream: UnixStream, handle: &mut dyn FnMut(Request) -> Reply) {
    let _ = stream.set_nonblocking(false);
    let mut reader = Deadline {
        stream: &stream,
        until: Instant::now() + REQUEST_DEADLINE,
    };
    let peer = peer_of(&stream);
    let request = read_frame::<Request>(&mut reader, MAX_REQUEST);
    respond(&stream, peer, request, handle);
}

/// Authorises and handles a request read from `stream`, and writes the reply.
fn respond(
    stream: &UnixStream,
    peer: io::Result<Peer>,
    request: Result<Request, FrameError>,
    handle: &mut dyn FnMut(Request) -> Reply,
) {
    let reply = match (peer, request) {
        (Err(e), _) => refused(format!("cannot read peer credentials: {e}")),
        (_, Err(FrameError::Io(e))) if e.kind() == io::ErrorKind::UnexpectedEof => return,
        (_, Err(e)) => refused(format!("bad request: {e}")),
        (Ok(peer), Ok(req)) => {
            // Changes and streams (trace/capture show every client's traffic) need privilege.
            let changes = matches!(
                req,
                Request::Apply(_)
                    | Request::Zero(_)
                    | Request::Trace(_)
                    | Request::SyncDaemon(_)
                    | Request::Announce(AnnounceCommand::Drain | AnnounceCommand::Resume)
                    | Request::Handover
            );
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
    };
    let _ = stream.set_nonblocking(false);
    let mut w = Deadline {
        stream,
        until: Instant::now() + REPLY_DEADLINE,
    };
    let _ = write_frame(&mut w, &reply);
}

/// Most admin connections held open while their requests arrive; beyond it new ones are
/// refused at once.
pub const MAX_PENDING: usize = 64;

/// A connection whose request is still arriving.
struct Pending {
    stream: UnixStream,
    peer: io::Result<Peer>,
    buf: Vec<u8>,
    until: Instant,
}

enum Progress {
    Waiting,
    Complete,
    /// Closed by the peer before its request was complete.
    Closed,
    Failed(io::Error),
}

impl Pending {
    /// Reads what has arrived, never more than the frame, never blocking.
    fn progress(&mut self) -> Progress {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let want = if self.buf.len() < 4 {
                4 - self.buf.len()
            } else {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if len > MAX_REQUEST {
                    // read_frame reports it (without reading further).
                    return Progress::Complete;
                }
                let missing = 4 + len - self.buf.len();
                if missing == 0 {
                    return Progress::Complete;
                }
                missing
            };
            let n = want.min(chunk.len());
            match (&self.stream).read(&mut chunk[..n]) {
                Ok(0) => return Progress::Closed,
                Ok(got) => self.buf.extend_from_slice(&chunk[..got]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Waiting,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Progress::Failed(e),
            }
        }
    }
}

/// The daemon's admin connections: accepted without waiting, requests gathered as they arrive
/// on each control-loop pass, each served once complete. A slow or silent peer costs a slot
/// in the pending list until its deadline, never the control thread's time.
#[derive(Default)]
pub struct AdminConns {
    pending: Vec<Pending>,
}

impl AdminConns {
    /// Accepts waiting connections, reads what has arrived on each pending one, and serves
    /// every complete request (refusing those past [`REQUEST_DEADLINE`]).
    /// Accepts, reads without blocking, and answers complete requests. An authorised streaming
    /// request (`Request::Trace`) is handed, with its connection, to `stream_to`, which replies
    /// and keeps the connection.
    pub fn poll(
        &mut self,
        listener: &UnixListener,
        handle: &mut dyn FnMut(Request) -> Reply,
        stream_to: &mut dyn FnMut(super::proto::TraceRequest, UnixStream),
    ) {
        for _ in 0..16 {
            match listener.accept() {
                Ok((stream, _)) => {
                    if self.pending.len() >= MAX_PENDING {
                        let _ = stream.set_nonblocking(true);
                        let _ = write_frame(
                            &mut &stream,
                            &refused("too many admin connections in progress; try again"),
                        );
                        continue;
                    }
                    let _ = stream.set_nonblocking(true);
                    let peer = peer_of(&stream);
                    self.pending.push(Pending {
                        stream,
                        peer,
                        buf: Vec::new(),
                        until: Instant::now() + REQUEST_DEADLINE,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    log::warn!("admin socket: {e}");
                    break;
                }
            }
        }
        let mut i = 0;
        while i < self.pending.len() {
            let outcome = self.pending[i].progress();
            if matches!(outcome, Progress::Waiting) && Instant::now() < self.pending[i].until {
                i += 1;
                continue;
            }
            let p = self.pending.swap_remove(i);
            let request = match outcome {
                Progress::Complete => read_frame::<Request>(&mut p.buf.as_slice(), MAX_REQUEST),
                Progress::Closed if p.buf.len() < 4 => continue,
                Progress::Closed => Err(FrameError::Io(io::Error::other(
                    "the peer closed the connection before its request was complete",
                ))),
                Progress::Waiting => Err(FrameError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer was too slow (deadline passed)",
                ))),
                Progress::Failed(e) => Err(FrameError::Io(e)),
            };
            if let (Ok(Request::Trace(req)), Ok(peer)) = (&request, &p.peer) {
                if peer.may_change {
                    let _ = p.stream.set_nonblocking(false);
                    stream_to(*req, p.stream);
                    continue;
                }
            }
            respond(&p.stream, p.peer, request, handle);
        }
    }

    /// Connections whose request is still arriving.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The descriptors of those connections: the control loop waits on them too, so a request
    /// whose bytes arrive after its connection was accepted is served when they arrive, not at
    /// the loop's next tick (which put ~20 ms on the tail of `uvsadm` round trips).
    pub fn fds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.pending.iter().map(|p| p.stream.as_raw_fd()).collect()
    }
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

    #[test]
    fn slow_and_silent_peers_do_not_delay_a_complete_request() {
        let dir = std::env::temp_dir().join(format!("uvs-admin-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("admin.sock");
        let listener = bind(Some(&path)).unwrap();
        let mut conns = AdminConns::default();
        // Ten peers that send half a length prefix and then nothing.
        let mut silent: Vec<UnixStream> = (0..10)
            .map(|_| {
                let mut s = UnixStream::connect(&path).unwrap();
                s.write_all(&[0, 0]).unwrap();
                s
            })
            .collect();
        let t0 = Instant::now();
        conns.poll(&listener, &mut |_| Reply::Done, &mut |_, _| {});
        assert_eq!(conns.pending(), 10);
        let mut client = UnixStream::connect(&path).unwrap();
        write_frame(&mut client, &Request::Status).unwrap();
        conns.poll(
            &listener,
            &mut |r| {
                assert_eq!(r, Request::Status);
                Reply::Done
            },
            &mut |_, _| {},
        );
        assert!(
            t0.elapsed() < Duration::from_millis(100),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(
            read_frame::<Reply>(&mut client, MAX_REPLY).unwrap(),
            Reply::Done
        );
        // Past the deadline the silent ones are refused and let go.
        std::thread::sleep(REQUEST_DEADLINE);
        conns.poll(
            &listener,
            &mut |_| panic!("nothing complete"),
            &mut |_, _| {},
        );
        assert_eq!(conns.pending(), 0);
        let r = read_frame::<Reply>(&mut silent[0], MAX_REPLY).unwrap();
        assert!(
            matches!(r, Reply::Refused(ref x) if x.message.contains("too slow")),
            "{r:?}"
        );
        silent.clear();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
