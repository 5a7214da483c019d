//! The client side of a trace or capture stream: length-prefixed chunks until the end.

/// Client side: reads the stream's chunks until EOF, `stop()` or an error, handing each to
/// `sink`. Returns the number of chunks.
pub fn read_stream(
    stream: &mut std::os::unix::net::UnixStream,
    stop: &dyn Fn() -> bool,
    sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    use std::io::Read;
    stream.set_read_timeout(Some(std::time::Duration::from_millis(200)))?;
    let mut n = 0;
    let mut read_exact = |buf: &mut [u8], may_stop: bool| -> std::io::Result<bool> {
        let mut got = 0;
        while got < buf.len() {
            match stream.read(&mut buf[got..]) {
                Ok(0) => return Ok(false),
                Ok(k) => got += k,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    if got == 0 && may_stop && stop() {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    };
    loop {
        let mut len = [0u8; 4];
        if !read_exact(&mut len, true)? {
            return Ok(n);
        }
        let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
        if !read_exact(&mut buf, false)? {
            return Ok(n);
        }
        sink(&buf)?;
        n += 1;
    }
}
