//! The probes: TCP connect, HTTP GET (hand-written HTTP/1.0 on std), external command
//! (keepalived MISC_CHECK semantics). Each takes a timeout and returns an [`Outcome`]; they
//! block, and run on health threads only.

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::HttpCheck;
use super::fsm::Outcome;

/// Largest response an HTTP check reads (keepalived reads the whole body for its digest).
const MAX_HTTP_RESPONSE: usize = 1 << 20;

fn fail(msg: impl Into<String>) -> Outcome {
    Outcome::Fail(msg.into())
}

/// TCP connect: passes when the three-way handshake completes within `timeout`.
pub fn tcp(target: SocketAddrV4, timeout: Duration) -> Outcome {
    match TcpStream::connect_timeout(&SocketAddr::V4(target), timeout) {
        Ok(_) => Outcome::Pass { weight: None },
        Err(e) => fail(format!("connect {target}: {e}")),
    }
}

/// The request an HTTP check sends.
pub fn http_request(check: &HttpCheck, target: SocketAddrV4) -> String {
    let host = check
        .host
        .clone()
        .unwrap_or_else(|| target.ip().to_string());
    format!(
        "{} {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: uvs-health\r\nConnection: close\r\n\r\n",
        check.method, check.path
    )
}

/// Judges a whole HTTP response against the check.
pub fn judge_http(check: &HttpCheck, regex: Option<&regex::Regex>, response: &[u8]) -> Outcome {
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, p + 4))
        .or_else(|| {
            response
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|p| (p, p + 2))
        });
    let Some((head_len, body_at)) = head_end else {
        return fail("HTTP: no complete header in the response");
    };
    let head = String::from_utf8_lossy(&response[..head_len]);
    let status_line = head.lines().next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let (Some(proto), Some(code)) = (parts.next(), parts.next()) else {
        return fail(format!("HTTP: bad status line {status_line:?}"));
    };
    let Ok(code) = code.parse::<u16>() else {
        return fail(format!("HTTP: bad status line {status_line:?}"));
    };
    if !proto.starts_with("HTTP/") {
        return fail(format!("HTTP: bad status line {status_line:?}"));
    }
    if !check
        .status
        .iter()
        .any(|&(lo, hi)| (lo..=hi).contains(&code))
    {
        return fail(format!("HTTP: status {code} not expected"));
    }
    let body = &response[body_at..];
    if let Some(want) = &check.expect {
        if !body
            .windows(want.len().max(1))
            .any(|w| w == want.as_bytes())
            && !want.is_empty()
        {
            return fail(format!("HTTP: body does not contain {want:?}"));
        }
    }
    if let Some(re) = regex {
        if !re.is_match(&String::from_utf8_lossy(body)) {
            return fail(format!("HTTP: body does not match /{}/", re.as_str()));
        }
    }
    if let Some(want) = &check.digest {
        let got = super::md5::hex(body);
        if !got.eq_ignore_ascii_case(want) {
            return fail(format!("HTTP: body MD5 {got}, expected {want}"));
        }
    }
    Outcome::Pass { weight: None }
}

/// HTTP GET (or HEAD) over HTTP/1.0, one connection per check.
pub fn http(
    check: &HttpCheck,
    regex: Option<&regex::Regex>,
    target: SocketAddrV4,
    timeout: Duration,
) -> Outcome {
    let deadline = Instant::now() + timeout;
    let mut s = match TcpStream::connect_timeout(&SocketAddr::V4(target), timeout) {
        Ok(s) => s,
        Err(e) => return fail(format!("connect {target}: {e}")),
    };
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let _ = s.set_write_timeout(Some(left()));
    if let Err(e) = s.write_all(http_request(check, target).as_bytes()) {
        return fail(format!("HTTP: sending the request: {e}"));
    }
    let mut resp = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if Instant::now() >= deadline {
            return fail("HTTP: response timed out");
        }
        let _ = s.set_read_timeout(Some(left()));
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                resp.extend_from_slice(&buf[..n]);
                if resp.len() > MAX_HTTP_RESPONSE {
                    return fail("HTTP: response larger than 1 MiB");
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return fail("HTTP: response timed out");
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return fail(format!("HTTP: reading the response: {e}")),
        }
    }
    judge_http(check, regex, &resp)
}

/// keepalived MISC_CHECK exit-status semantics: 0 passes, 1 fails; with `dynamic`, 2..=255
/// pass with weight `code − 2`; without it any non-zero status fails.
pub fn misc_outcome(code: Option<i32>, dynamic: bool) -> Outcome {
    match code {
        Some(0) => Outcome::Pass { weight: None },
        Some(c @ 2..=255) if dynamic => Outcome::Pass {
            weight: Some(c as u32 - 2),
        },
        Some(c) => fail(format!("command exited with status {c}")),
        None => fail("command killed by a signal"),
    }
}

/// Runs `sh -c command` in its own process group; kills the whole group on timeout.
pub fn misc(command: &str, dynamic: bool, timeout: Duration) -> Outcome {
    let mut child = match Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot run {command:?}: {e}")),
    };
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return misc_outcome(status.code(), dynamic),
            Ok(None) => {}
            Err(e) => return fail(format!("waiting for {command:?}: {e}")),
        }
        if Instant::now() >= deadline {
            let pgid = child.id();
            // The group is the one created for this child (process_group(0)), and the child
            // is not reaped yet, so its PID (= PGID) cannot have been reused.
            crate::io::process::signal_group(pgid, libc::SIGKILL);
            let _ = child.wait();
            return fail(format!(
                "command timed out after {timeout:?} and was killed"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> HttpCheck {
        HttpCheck::default()
    }

    fn pass() -> Outcome {
        Outcome::Pass { weight: None }
    }

    #[test]
    fn request_is_http_1_0_with_host() {
        let mut c = check();
        c.path = "/health".into();
        let t: SocketAddrV4 = "10.0.0.11:80".parse().unwrap();
        assert_eq!(
            http_request(&c, t),
            "GET /health HTTP/1.0\r\nHost: 10.0.0.11\r\nUser-Agent: uvs-health\r\nConnection: close\r\n\r\n"
        );
        c.host = Some("www.example.com".into());
        assert!(http_request(&c, t).contains("Host: www.example.com\r\n"));
    }

    #[test]
    fn status_ranges_body_regex_and_digest() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nrs1\n";
        assert_eq!(judge_http(&check(), None, ok), pass());
        let mut c = check();
        c.status = vec![(301, 302)];
        assert!(matches!(judge_http(&c, None, ok), Outcome::Fail(m) if m.contains("status 200")));
        assert_eq!(judge_http(&c, None, b"HTTP/1.0 302 Found\r\n\r\n"), pass());
        let mut c = check();
        c.expect = Some("rs1".into());
        assert_eq!(judge_http(&c, None, ok), pass());
        c.expect = Some("Test".into());
        assert!(matches!(judge_http(&c, None, ok), Outcome::Fail(_)));
        let re = regex::Regex::new("^rs[0-9]$").unwrap();
        assert!(matches!(
            judge_http(&check(), Some(&re), ok),
            Outcome::Fail(_)
        ));
        let re = regex::Regex::new("(?m)^rs[0-9]$").unwrap();
        assert_eq!(judge_http(&check(), Some(&re), ok), pass());
        let mut c = check();
        c.digest = Some(super::super::md5::hex(b"rs1\n").to_uppercase());
        assert_eq!(judge_http(&c, None, ok), pass());
        c.digest = Some(super::super::md5::hex(b"rs2\n"));
        assert!(matches!(judge_http(&c, None, ok), Outcome::Fail(m) if m.contains("MD5")));
        assert!(matches!(
            judge_http(&check(), None, b"garbage"),
            Outcome::Fail(_)
        ));
    }

    #[test]
    fn misc_exit_codes_follow_keepalived() {
        assert_eq!(misc_outcome(Some(0), true), pass());
        assert!(matches!(misc_outcome(Some(1), true), Outcome::Fail(_)));
        assert_eq!(
            misc_outcome(Some(7), true),
            Outcome::Pass { weight: Some(5) }
        );
        assert!(matches!(misc_outcome(Some(7), false), Outcome::Fail(_)));
        assert!(matches!(misc_outcome(None, true), Outcome::Fail(_)));
    }

    #[test]
    fn misc_runs_and_kills_on_timeout() {
        assert_eq!(misc("exit 0", false, Duration::from_secs(5)), pass());
        assert_eq!(
            misc("exit 12", true, Duration::from_secs(5)),
            Outcome::Pass { weight: Some(10) }
        );
        let t = Instant::now();
        let o = misc("sleep 5; exit 0", false, Duration::from_millis(100));
        assert!(matches!(o, Outcome::Fail(m) if m.contains("timed out")));
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
