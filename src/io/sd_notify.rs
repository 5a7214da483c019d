//! systemd's service notification protocol (sd_notify(3)): one datagram of `KEY=VALUE` lines
//! sent to the socket `$NOTIFY_SOCKET` names, a path or, with a leading `@`, an abstract
//! name. A unit with `Type=notify` is "started" when uvs says `READY=1`, shows "reloading"
//! between `RELOADING=1` and the next `READY=1`, and "deactivating" after `STOPPING=1`.
//! Without the variable (not started that way) nothing is sent.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Forwarding, answering ARP for the VIPs, serving uvsadm.
    Ready,
    /// Re-reading the configuration (SIGHUP); `Ready` follows.
    Reloading,
    /// A graceful stop has begun.
    Stopping,
}

impl Status {
    /// The datagram for this status. `RELOADING=1` carries `MONOTONIC_USEC`, which systemd's
    /// `Type=notify-reload` needs to tell this reload from an earlier one.
    pub fn message(self) -> String {
        match self {
            Status::Ready => "READY=1\nSTATUS=forwarding".into(),
            Status::Reloading => format!(
                "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the configuration",
                monotonic_usec()
            ),
            Status::Stopping => "STOPPING=1\nSTATUS=stopping".into(),
        }
    }
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000)
        .saturating_add(ts.tv_nsec as u64 / 1_000)
}

/// Tells systemd `status` if it asked to be told; a failure is logged (the unit would then
/// wait for a readiness that never comes, so it must be visible).
pub fn tell(status: Status) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_to(&target, &status.message()) {
        log::warn!(
            "cannot notify systemd ({status:?}) on {}: {e}",
            target.to_string_lossy()
        );
    }
}

/// Sends one notification datagram to `target`, written as `$NOTIFY_SOCKET` is.
pub fn send_to(target: &OsStr, message: &str) -> io::Result<()> {
    let bytes = target.as_bytes();
    let addr = match bytes.split_first() {
        Some((b'@', name)) => SocketAddr::from_abstract_name(name)?,
        Some((b'/', _)) => SocketAddr::from_pathname(Path::new(target))?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is neither an absolute path nor an @abstract name",
            ));
        }
    };
    let socket = UnixDatagram::unbound()?;
    let sent = socket.send_to_addr(message.as_bytes(), &addr)?;
    if sent != message.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "notification datagram truncated",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn notifies_a_path_socket_and_an_abstract_one() {
        let dir = std::env::temp_dir().join(format!("uvs-sd-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str(), &Status::Ready.message()).unwrap();
        assert_eq!(receive(&listener), "READY=1\nSTATUS=forwarding");
        std::fs::remove_dir_all(&dir).unwrap();

        let name = format!("uvs-test-notify-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        send_to(OsStr::new(&format!("@{name}")), &Status::Stopping.message()).unwrap();
        assert_eq!(receive(&listener), "STOPPING=1\nSTATUS=stopping");
    }

    #[test]
    fn reloading_carries_the_monotonic_time() {
        let before = monotonic_usec();
        let m = Status::Reloading.message();
        let usec: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!(m.starts_with("RELOADING=1\n"));
        assert!(usec >= before && usec <= monotonic_usec());
    }

    #[test]
    fn a_relative_or_missing_socket_is_an_error() {
        assert_eq!(
            send_to(OsStr::new("run/notify"), "READY=1")
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(send_to(OsStr::new("/nonexistent/notify"), "READY=1").is_err());
    }
}
