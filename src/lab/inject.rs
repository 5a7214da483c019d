//! `uvs lab-send-frames`: puts hand-made Ethernet frames on the wire, for tests that feed the
//! director malformed input. Frames are read from a file as a sequence of records, each a
//! big-endian `u16` length followed by that many bytes (see [`encode_frames`]), and sent one by
//! one, unchanged, on an `AF_PACKET`/`SOCK_RAW` socket bound to the interface.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Minimum frame the kernel accepts from a raw packet socket on Ethernet (a full header).
pub const MIN_SENDABLE: usize = 14;

/// Serialises frames into the file format [`send_frames`] reads.
pub fn encode_frames(frames: &[Vec<u8>]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for f in frames {
        let len = u16::try_from(f.len()).context("frame longer than 65535 bytes")?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(f);
    }
    Ok(out)
}

/// Parses the file format back into frames.
pub fn decode_frames(mut data: &[u8]) -> Result<Vec<&[u8]>> {
    let mut frames = Vec::new();
    while !data.is_empty() {
        if data.len() < 2 {
            bail!("trailing byte after {} frames", frames.len());
        }
        let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
        let Some(frame) = data.get(2..2 + len) else {
            bail!(
                "frame {} claims {len} bytes, {} left",
                frames.len(),
                data.len() - 2
            );
        };
        frames.push(frame);
        data = &data[2 + len..];
    }
    Ok(frames)
}

/// Outcome of one [`send_frames`] run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendReport {
    pub sent: usize,
    /// Frames shorter than [`MIN_SENDABLE`]: the kernel refuses them (EINVAL), so they are
    /// skipped rather than failing the run.
    pub too_short: usize,
}

/// Sends every frame of `file` on `ifname`. Fails on the first error other than a refused
/// too-short frame.
pub fn send_frames(ifname: &str, file: &Path) -> Result<SendReport> {
    let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let frames = decode_frames(&data)?;
    let cname = CString::new(ifname).context("interface name contains NUL")?;
    // SAFETY: `cname` is a valid NUL-terminated string that outlives the call.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        bail!("interface {ifname}: {}", io::Error::last_os_error());
    }
    // Protocol 0: the socket transmits only and never receives a frame.
    // SAFETY: socket(2) has no memory-safety preconditions.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        bail!("socket(AF_PACKET): {}", io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as libc::c_ushort;
    sll.sll_protocol = 0;
    sll.sll_ifindex = i32::try_from(ifindex).context("ifindex out of range")?;
    sll.sll_halen = 6;
    let sll_len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `sll` is a live, initialised sockaddr_ll and `sll_len` is its size.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            sll_len,
        )
    };
    if r != 0 {
        bail!("bind to {ifname}: {}", io::Error::last_os_error());
    }
    let mut report = SendReport::default();
    for (i, frame) in frames.iter().enumerate() {
        loop {
            // SAFETY: `frame` is a live slice; the kernel reads `frame.len()` bytes from it.
            let n = unsafe { libc::send(sock.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            if n >= 0 {
                report.sent += 1;
                break;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    continue;
                }
                Some(libc::EINVAL) if frame.len() < MIN_SENDABLE => {
                    report.too_short += 1;
                    break;
                }
                _ => bail!("sending frame {i} ({} bytes) on {ifname}: {e}", frame.len()),
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_the_file_format() {
        let frames = vec![vec![], vec![1u8; 10], vec![2u8; 1514]];
        let enc = encode_frames(&frames).unwrap();
        assert_eq!(enc.len(), 3 * 2 + 10 + 1514);
        let dec = decode_frames(&enc).unwrap();
        assert_eq!(dec, frames.iter().map(Vec::as_slice).collect::<Vec<_>>());
        assert!(decode_frames(&enc[..enc.len() - 1]).is_err());
        assert!(decode_frames(&[0]).is_err());
    }
}
