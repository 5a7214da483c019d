//! `uvs lab-send-frames`: puts hand-made Ethernet frames on the wire, for tests that feed the
//! director malformed input. Frames are read from a file as a sequence of records, each a
//! big-endian `u16` length followed by that many bytes (see [`encode_frames`]), and sent one by
//! one, unchanged, on an `AF_PACKET`/`SOCK_RAW` socket bound to the interface.

use std::os::fd::AsRawFd;
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
    let ifindex = crate::io::socket::if_index(ifname)?;
    let sock = crate::io::socket::open_raw_tx(ifname, ifindex)?;
    let mut report = SendReport::default();
    for (i, frame) in frames.iter().enumerate() {
        loop {
            let e = match crate::io::socket::send_frame(sock.as_raw_fd(), frame) {
                Ok(()) => {
                    report.sent += 1;
                    break;
                }
                Err(e) => e,
            };
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
