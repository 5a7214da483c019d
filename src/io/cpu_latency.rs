//! A CPU latency QoS request (`[ring] cpu_latency_us`), held for the daemon's lifetime.
//!
//! The kernel's CPU latency QoS (`/dev/cpu_dma_latency`, Documentation/power/pm_qos_interface)
//! bounds how deep an idle CPU may sleep: while some process holds the device open with a
//! value written to it, cpuidle picks no state whose exit latency exceeds it. With 0, an idle
//! CPU polls its run queue instead of halting, so the sender's CPU hands a woken worker over
//! by setting a flag, without an inter-processor interrupt — and in a VM without the
//! hypervisor's wake-up of a halted vCPU. The request ends when the file is closed, also when
//! the process dies, so no exit path leaves the machine tuned.
//!
//! Unlike `[ring] busy_poll_us` the worker still sleeps: the polling happens in the idle loop,
//! which gives way to any runnable thread at once.
//! The cost is the idle CPUs' power (or, in a VM, the host CPU time of vCPUs that never halt).

use std::fs::{File, OpenOptions};
use std::io::Write;

/// The kernel's character device for system-wide CPU latency requests.
pub const DEVICE: &str = "/dev/cpu_dma_latency";

/// An active request; dropping it withdraws the request.
#[derive(Debug)]
pub struct CpuLatencyRequest {
    // Never read: the open file *is* the request.
    _device: File,
}

impl CpuLatencyRequest {
    /// Asks the kernel to keep every CPU's wake-up latency at most `microseconds`.
    pub fn hold(microseconds: u32) -> std::io::Result<CpuLatencyRequest> {
        Self::hold_at(DEVICE, microseconds)
    }

    fn hold_at(path: &str, microseconds: u32) -> std::io::Result<CpuLatencyRequest> {
        let value = i32::try_from(microseconds).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a CPU latency request must fit in 32 bits",
            )
        })?;
        let mut device = OpenOptions::new().write(true).open(path)?;
        // A 4-byte write is taken as a binary s32 in host byte order; anything else as hex
        // text, so text such as "1000" (4 bytes) would be misread.
        device.write_all(&value.to_ne_bytes())?;
        Ok(CpuLatencyRequest { _device: device })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_written_as_a_binary_s32() {
        let file = std::env::temp_dir().join(format!("uvs-cpulat-{}", std::process::id()));
        std::fs::write(&file, b"").unwrap();
        let req = CpuLatencyRequest::hold_at(file.to_str().unwrap(), 20).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), 20i32.to_ne_bytes());
        drop(req);
        std::fs::remove_file(&file).unwrap();
    }

    #[test]
    fn a_missing_device_is_an_error_not_a_silent_default() {
        let e = CpuLatencyRequest::hold_at("/nonexistent/cpu_dma_latency", 0).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }
}
