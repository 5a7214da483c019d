//! Reading and writing the kernel's `/proc/sys` settings of the current network namespace.

use std::io;

/// The value of `/proc/sys/<key>` (key with slashes, e.g. `net/ipv4/ip_forward`), trimmed.
pub fn read(key: &str) -> io::Result<String> {
    Ok(std::fs::read_to_string(format!("/proc/sys/{key}"))?
        .trim()
        .to_string())
}

/// Writes `value` to `/proc/sys/<key>`.
pub fn write(key: &str, value: &str) -> io::Result<()> {
    std::fs::write(format!("/proc/sys/{key}"), value)
}
