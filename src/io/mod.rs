//! The only module with `unsafe` and raw syscalls (the crate root denies `unsafe_code`
//! everywhere else): AF_PACKET sockets, PACKET_MMAP receive rings, the socket filter, batched
//! transmit, huge-page tables, netlink (the nf_tables socket that owns uvs's tables, the
//! routing table), raw IP and UDP socket options (VRRP, sync, the lab's responder), peer
//! credentials, signals, clocks, process signals, per-thread knobs, the CPU latency
//! request, and the TUN device of the lab's tunnel endpoint. Each function here is safe to call; each `unsafe` block says why it is sound. It
//! knows nothing about load balancing.
//!
//! Receive and transmit are built around one measured fact (a C forwarder measured both
//! ways): rewriting a frame in place inside the receive ring and handing it to `sendmmsg` from there costs
//! about 14 % less CPU than copying it into a TX ring, because the TX ring's page-fragment skbs
//! are copied again at the veth. So there is no TX ring: a worker rewrites frames in the RX
//! block, queues `iovec`s pointing into it ([`tx::TxQueue`]), sends them with one `sendmmsg`
//! per egress interface per batch, and only then returns the block to the kernel.
//!
//! Both socket kinds use `PACKET_VNET_HDR`: every received frame is preceded by a
//! `virtio_net_hdr` that says whether its transport checksum is still partial
//! (`CHECKSUM_PARTIAL` on veth) and whether it is a GSO super-frame larger than the MTU. The
//! transmit socket takes the same header back, so the kernel completes the checksum or
//! segments the frame on the way out. Without it a userspace forwarder sends broken checksums
//! and oversize frames on veth with default offloads.

pub mod announce_device;
pub mod clock;
pub mod cpu_latency;
pub mod filter;
pub mod huge_array;
pub mod ip_raw;
pub mod nftables;
pub mod process;
pub mod ring;
pub mod rtnetlink;
pub mod sd_notify;
pub mod signals;
pub mod socket;
pub mod sysctl;
pub mod thread;
pub mod tun;
pub mod tx;
pub mod udp;
pub mod unix;
pub mod wakeup;

/// Size of `struct virtio_net_hdr`, which precedes every frame on a `PACKET_VNET_HDR` socket.
pub const VNET_HDR_LEN: usize = 10;
/// `virtio_net_hdr.flags`: the transport checksum must still be completed.
pub const VNET_F_NEEDS_CSUM: u8 = 1;
/// `virtio_net_hdr.flags`: the receiver validated the checksum. Meaningless on transmit.
pub const VNET_F_DATA_VALID: u8 = 2;

/// Errors that setting up sockets or rings can produce; each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("{what} on interface {interface}: {source}")]
    Sys {
        what: &'static str,
        interface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ring geometry rejected: {0}")]
    Geometry(String),
}

pub(crate) fn sys_err(what: &'static str, interface: &str) -> IoError {
    IoError::Sys {
        what,
        interface: interface.to_string(),
        source: std::io::Error::last_os_error(),
    }
}

/// Test support: moves the calling thread into a network namespace of its own, so a test can
/// change what the kernel holds (nftables, interfaces) without touching the machine's. False
/// when that is not allowed (not root).
#[cfg(test)]
pub(crate) fn enter_private_netns() -> bool {
    // SAFETY: geteuid has no preconditions; unshare affects only the calling thread.
    unsafe { libc::geteuid() == 0 && libc::unshare(libc::CLONE_NEWNET) == 0 }
}
