//! Built-in test responders, run by the hidden `uvs lab-http` / `uvs lab-udp-echo`
//! subcommands inside a lab namespace when nginx is not wanted or not installed.
//!
//! Both answer with the server's name (`<name>\n`) so a client can tell which real server a
//! director picked. An HTTP `POST` is answered with `<name> bytes=<N> fnv=<H>\n`: the body's
//! length and its FNV-1a 64-bit hash (16 hex digits), so a test can check an upload arrived
//! intact through the director; a `GET /bytes/N` is answered with N bytes of [`pattern`], so
//! a test can check a download.
//!
//! Both read a PROXY protocol header (v1 or v2, as a FullNAT director sends one) when a
//! connection or datagram starts with one, as nginx's `listen … proxy_protocol` does: `GET
//! /peer` is answered with `<name> client=<IP:PORT> via=<proxy-v1|proxy-v2|direct>\n`, the
//! client the header names (or the TCP peer without one), and each connection is logged so.
//! A datagram with a v2 header is answered with the same line.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::proxy_protocol;

/// Idle keep-alive connections are dropped after this, so abandoned clients do not pin threads.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bounds on one request head, so a broken client cannot make us buffer without limit.
const MAX_HEADER_LINES: usize = 100;
const MAX_LINE: usize = 8 * 1024;

/// Serves HTTP/1.x on 0.0.0.0:`port`, one thread per connection: every request gets
/// `200 OK` with body `<name>\n` (a `POST`: `<name> bytes=<N> fnv=<H>\n`, see [`fnv1a64`]),
/// `Expect: 100-continue` answered, keep-alive honoured (HTTP/1.1 default, `Connection: close`
/// and HTTP/1.0 without `keep-alive` close after the reply). Runs until the process is killed.
pub fn serve_http(name: &str, port: u16) -> Result<()> {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
        .with_context(|| format!("binding TCP port {port}"))?;
    let name: std::sync::Arc<str> = name.into();
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let name = name.clone();
                thread::spawn(move || {
                    if let Err(e) = http_conn(stream, &name) {
                        log::debug!("lab-http: connection: {e}");
                    }
                });
            }
            // Transient (EMFILE, ECONNABORTED): keep serving the rest.
            Err(e) => {
                log::warn!("lab-http: accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    Ok(())
}

/// Largest `GET /bytes/N` answered.
const MAX_DOWNLOAD: usize = 64 << 20;

/// `n` bytes of a fixed pseudo-random stream (xorshift64): what `GET /bytes/N` returns, for a
/// test to compare a download against.
pub fn pattern(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// FNV-1a, 64-bit: state for hashing a stream in pieces.
#[derive(Clone, Copy, Debug)]
pub struct Fnv1a64(u64);

impl Default for Fnv1a64 {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a64 {
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

/// FNV-1a 64-bit hash of `data`.
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h = Fnv1a64::default();
    h.update(data);
    h.finish()
}

/// Reads exactly `len` bytes of a request body; returns how many arrived and their hash.
fn hash_body(r: &mut impl Read, len: u64) -> io::Result<(u64, u64)> {
    let mut h = Fnv1a64::default();
    let mut n = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut rest = r.take(len);
    loop {
        let k = match rest.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..k]);
        n += k as u64;
    }
    if n < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("request body: {n} of {len} bytes"),
        ));
    }
    Ok((n, h.finish()))
}

/// Who a connection or datagram came from, as the PROXY header (if any) says.
struct Origin {
    client: SocketAddrV4,
    via: &'static str,
}

impl Origin {
    fn direct(peer: std::net::SocketAddr) -> Origin {
        let client = match peer {
            std::net::SocketAddr::V4(a) => a,
            std::net::SocketAddr::V6(_) => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        };
        Origin {
            client,
            via: "direct",
        }
    }

    fn line(&self, name: &str) -> String {
        format!("{name} client={} via={}\n", self.client, self.via)
    }
}

/// The origin a PROXY header at the start of `b` names, and the header's length; `None` when
/// `b` does not start with a complete header.
fn proxied(b: &[u8]) -> Option<(Origin, usize)> {
    match proxy_protocol::decode(b) {
        proxy_protocol::Decoded::Header { endpoints, len } => Some((
            Origin {
                client: SocketAddrV4::new(endpoints.client, endpoints.client_port),
                via: if b[0] == b'P' { "proxy-v1" } else { "proxy-v2" },
            },
            len,
        )),
        _ => None,
    }
}

/// Reads a PROXY header if the connection starts with one: the origin, and the bytes read
/// past the header (or all bytes read, without one), which belong to the request stream.
fn read_proxy_header(stream: &mut TcpStream) -> io::Result<(Origin, Vec<u8>)> {
    let mut buf = [0u8; 16 + 216];
    let mut len = 0;
    let direct = Origin::direct(stream.peer_addr()?);
    loop {
        let n = stream.read(&mut buf[len..])?;
        len += n;
        match proxy_protocol::decode(&buf[..len]) {
            proxy_protocol::Decoded::Incomplete if n > 0 && len < buf.len() => continue,
            proxy_protocol::Decoded::Invalid => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "broken PROXY protocol header",
                ));
            }
            proxy_protocol::Decoded::Unknown { len: h } => {
                return Ok((direct, buf[h..len].to_vec()));
            }
            _ => {
                return Ok(match proxied(&buf[..len]) {
                    Some((origin, h)) => (origin, buf[h..len].to_vec()),
                    None => (direct, buf[..len].to_vec()),
                });
            }
        }
    }
}

fn http_conn(mut stream: TcpStream, name: &str) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let _ = stream.set_nodelay(true);
    let mut w = stream.try_clone()?;
    let (origin, early) = read_proxy_header(&mut stream)?;
    log::info!(
        "lab-http {name}: connection from {} via {} (TCP peer {})",
        origin.client,
        origin.via,
        stream.peer_addr()?
    );
    let mut r = BufReader::new(io::Cursor::new(early).chain(stream));
    let mut line = String::new();
    loop {
        line.clear();
        if read_line(&mut r, &mut line)? == 0 {
            return Ok(());
        }
        let request_line = line.trim_end().to_string();
        if request_line.is_empty() {
            // Stray CRLF between requests is allowed (RFC 9112 §2.2).
            continue;
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("/").to_string();
        let version = parts.next().unwrap_or("HTTP/1.0").to_string();
        let mut keep_alive = version == "HTTP/1.1";
        let mut content_length: u64 = 0;
        let mut expect_continue = false;
        let mut lines = 0;
        loop {
            line.clear();
            if read_line(&mut r, &mut line)? == 0 {
                return Ok(());
            }
            let h = line.trim_end();
            if h.is_empty() {
                break;
            }
            lines += 1;
            if lines > MAX_HEADER_LINES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "too many headers",
                ));
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim(), v.trim());
                if k.eq_ignore_ascii_case("connection") {
                    let v = v.to_ascii_lowercase();
                    if v.contains("close") {
                        keep_alive = false;
                    } else if v.contains("keep-alive") {
                        keep_alive = true;
                    }
                } else if k.eq_ignore_ascii_case("content-length") {
                    content_length = v.parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("expect") {
                    expect_continue = v.eq_ignore_ascii_case("100-continue");
                }
            }
        }
        if expect_continue && content_length > 0 {
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let body = if method == "POST" {
            let (n, h) = hash_body(&mut r, content_length)?;
            format!("{name} bytes={n} fnv={h:016x}\n").into_bytes()
        } else {
            // Discard a request body so the next request on this connection parses cleanly.
            io::copy(&mut (&mut r).take(content_length), &mut io::sink())?;
            match path
                .strip_prefix("/bytes/")
                .and_then(|n| n.parse::<usize>().ok())
            {
                Some(n) if n <= MAX_DOWNLOAD => pattern(n),
                _ if path == "/peer" => origin.line(name).into_bytes(),
                _ => format!("{name}\n").into_bytes(),
            }
        };
        let conn = if keep_alive { "keep-alive" } else { "close" };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: {conn}\r\n\r\n",
            body.len()
        );
        w.write_all(head.as_bytes())?;
        if method != "HEAD" {
            w.write_all(&body)?;
        }
        if !keep_alive {
            return Ok(());
        }
    }
}

fn read_line(r: &mut impl BufRead, line: &mut String) -> io::Result<usize> {
    let n = r.take(MAX_LINE as u64).read_line(line)?;
    if n == MAX_LINE && !line.ends_with('\n') {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
    }
    Ok(n)
}

/// Serves UDP on 0.0.0.0:`port`: every datagram gets `<name>\n` back. The reply leaves from
/// the address the datagram was sent to (IP_PKTINFO): on a DR real server that is the VIP on
/// `lo`, and a reply from the RS's own address would not match the client's socket.
pub fn serve_udp(name: &str, port: u16) -> Result<()> {
    let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
        .with_context(|| format!("binding UDP port {port}"))?;
    crate::io::udp::enable_pktinfo(&sock).context("setsockopt(IP_PKTINFO)")?;
    let plain = format!("{name}\n");
    let mut buf = [0u8; 65536];
    loop {
        let (n, peer, local) = match crate::io::udp::recv_with_destination(&sock, &mut buf) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("recvmsg"),
        };
        let reply = match proxied(&buf[..n.min(buf.len())]) {
            Some((origin, _)) => origin.line(name),
            None => plain.clone(),
        };
        if let Err(e) = crate::io::udp::send_from(&sock, reply.as_bytes(), peer, local) {
            log::warn!("lab-udp-echo: reply to {peer}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One request on a fresh loopback connection served by `http_conn`: the response body.
    fn ask(prefix: &[u8], request: &[u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            http_conn(s, "rs1")
        });
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(prefix).unwrap();
        c.write_all(request).unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        server.join().unwrap().unwrap();
        out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
    }

    #[test]
    fn a_proxy_header_names_the_client_and_is_not_part_of_the_request() {
        let e = proxy_protocol::Endpoints {
            client: Ipv4Addr::new(198, 51, 100, 10),
            client_port: 40000,
            server: Ipv4Addr::new(203, 0, 113, 80),
            server_port: 80,
            udp: false,
        };
        let get = b"GET /peer HTTP/1.0\r\n\r\n";
        for (version, via) in [
            (proxy_protocol::Version::V1, "proxy-v1"),
            (proxy_protocol::Version::V2, "proxy-v2"),
        ] {
            let mut h = [0u8; proxy_protocol::MAX_LEN];
            let n = proxy_protocol::encode(version, &e, &mut h).unwrap();
            assert_eq!(
                ask(&h[..n], get),
                format!("rs1 client=198.51.100.10:40000 via={via}\n")
            );
        }
        let direct = ask(b"", get);
        assert!(
            direct.starts_with("rs1 client=127.0.0.1:") && direct.ends_with(" via=direct\n"),
            "{direct}"
        );
        assert_eq!(ask(b"", b"GET / HTTP/1.0\r\n\r\n"), "rs1\n");
    }

    #[test]
    fn fnv1a64_known_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        let mut h = Fnv1a64::default();
        h.update(b"foo");
        h.update(b"bar");
        assert_eq!(h.finish(), fnv1a64(b"foobar"));
    }
}
