//! Per-worker counters: plain single-writer atomics (relaxed load + store, about one cycle),
//! cache-line padded, summed by the control thread. Workers never touch the `metrics` crate
//! (4–60 ns per update, as measured when the crates were chosen).

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

use crate::model::RealId;

/// Why a frame was not forwarded. Every frame a worker receives is either forwarded or
/// counted under exactly one of these; the names are the `reason` label values in metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// The ring kept only part of the frame (larger than a ring block / frame slot).
    RingTruncated,
    /// Shorter than the headers it claims (Ethernet, IPv4, or its own length fields).
    Truncated,
    /// 802.1Q tagged: VLANs are not supported; the kernel handles the frame.
    VlanTagged,
    /// Neither IPv4 nor anything else uvs forwards (odd ethertype).
    NotIpv4,
    /// IPv4 header with version ≠ 4 or IHL < 5.
    BadIpHeader,
    /// IPv4 total length smaller than its header or larger than the frame.
    BadIpLength,
    BadIpChecksum,
    /// IP fragments are not reassembled: the director's kernel is kept off them too.
    Fragment,
    /// Broadcast/multicast source MAC or source IP, or source 0.0.0.0.
    BadSource,
    /// To a VIP, but no service for that protocol and port (left to the kernel).
    NotAService,
    /// To a VIP this director stands by for (VRRP BACKUP or FAULT): the MASTER forwards it.
    Standby,
    /// From a masquerading real's service port to one of the director's own addresses (its
    /// health checks, an operator's connection): the kernel's, left to it.
    ToDirector,
    /// From a masquerading real's service port, but no flow for it (expired, or never
    /// through this director): not rewritten, and the kernel filter keeps the raw reply in.
    ReplyNoFlow,
    /// No route to the client leaves by an interface uvs serves.
    NoRoute,
    /// An ICMP error to a VIP or from a masquerading real, about no flow: not rewritten.
    IcmpNoFlow,
    /// TCP/UDP header missing, truncated, or TCP data offset < 5.
    BadL4Header,
    /// Source or destination port 0.
    ZeroPort,
    /// TTL would reach 0 (IPVS would send ICMP time exceeded; uvs only counts).
    TtlExceeded,
    /// TCP without SYN (or with RST) and no flow entry (IPVS: no entry unless sloppy_tcp).
    TcpNoFlow,
    /// The scheduler found no usable real server (none, or all weight 0).
    NoRealServer,
    /// The flow's real server was deleted (IPVS with expire_nodest_conn=0 drops silently).
    RealRemoved,
    /// The real server's MAC is not known (yet).
    NoNeighbor,
    /// The egress interface of the next hop is not one of the director's (no MAC for it).
    NoEgress,
    /// The kernel refused to send the frame.
    TxFailed,
    /// DF set and too big for the tunnel to its real once encapsulated: answered with ICMP
    /// fragmentation-needed carrying the tunnel MTU (unless rate-limited), as IPVS answers.
    TunnelTooBig,
    /// Too big for the tunnel once encapsulated, without DF: IPVS fragments the outer
    /// packet; uvs does not.
    TunnelNeedsFragments,
    /// A GSO super-frame of a kind uvs cannot cut into segments for a tunnel (not TCP/IPv4).
    UnsupportedGso,
    /// A new FullNAT connection found every local port of its service's local addresses in
    /// use (counted per address too: `uvs_fullnat_port_exhausted_total`).
    NoLocalPort,
}

impl DropReason {
    pub const COUNT: usize = 28;
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::RingTruncated,
        DropReason::Truncated,
        DropReason::VlanTagged,
        DropReason::NotIpv4,
        DropReason::BadIpHeader,
        DropReason::BadIpLength,
        DropReason::BadIpChecksum,
        DropReason::Fragment,
        DropReason::BadSource,
        DropReason::NotAService,
        DropReason::Standby,
        DropReason::ToDirector,
        DropReason::ReplyNoFlow,
        DropReason::NoRoute,
        DropReason::IcmpNoFlow,
        DropReason::BadL4Header,
        DropReason::ZeroPort,
        DropReason::TtlExceeded,
        DropReason::TcpNoFlow,
        DropReason::NoRealServer,
        DropReason::RealRemoved,
        DropReason::NoNeighbor,
        DropReason::NoEgress,
        DropReason::TxFailed,
        DropReason::TunnelTooBig,
        DropReason::TunnelNeedsFragments,
        DropReason::UnsupportedGso,
        DropReason::NoLocalPort,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::RingTruncated => "ring_truncated",
            DropReason::Truncated => "truncated",
            DropReason::VlanTagged => "vlan_tagged",
            DropReason::NotIpv4 => "not_ipv4",
            DropReason::BadIpHeader => "bad_ip_header",
            DropReason::BadIpLength => "bad_ip_length",
            DropReason::BadIpChecksum => "bad_ip_checksum",
            DropReason::Fragment => "fragment",
            DropReason::BadSource => "bad_source",
            DropReason::NotAService => "not_a_service",
            DropReason::Standby => "standby",
            DropReason::ToDirector => "to_director",
            DropReason::ReplyNoFlow => "reply_no_flow",
            DropReason::NoRoute => "no_route",
            DropReason::IcmpNoFlow => "icmp_no_flow",
            DropReason::BadL4Header => "bad_l4_header",
            DropReason::ZeroPort => "zero_port",
            DropReason::TtlExceeded => "ttl_exceeded",
            DropReason::TcpNoFlow => "tcp_no_flow",
            DropReason::NoRealServer => "no_real_server",
            DropReason::RealRemoved => "real_removed",
            DropReason::NoNeighbor => "no_neighbor",
            DropReason::NoEgress => "no_egress",
            DropReason::TxFailed => "tx_failed",
            DropReason::TunnelTooBig => "tunnel_too_big",
            DropReason::TunnelNeedsFragments => "tunnel_needs_fragments",
            DropReason::UnsupportedGso => "unsupported_gso",
            DropReason::NoLocalPort => "no_local_port",
        }
    }
}

/// Why a SYN that matched an existing flow started a new connection instead of being taken
/// as part of the old one (IPVS's `conn_reuse_mode` and `expire_nodest_conn`, extended: see
/// `process::reuse`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ReuseReason {
    /// The old connection was closing (FIN_WAIT, TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK).
    Closing,
    /// Its real server was removed.
    RealRemoved,
    /// Its real server was quiesced (weight 0).
    Quiesced,
    /// Its real server is over its connection threshold (`-x`).
    Unavailable,
}

impl ReuseReason {
    pub const COUNT: usize = 4;
    pub const ALL: [ReuseReason; ReuseReason::COUNT] = [
        ReuseReason::Closing,
        ReuseReason::RealRemoved,
        ReuseReason::Quiesced,
        ReuseReason::Unavailable,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            ReuseReason::Closing => "closing",
            ReuseReason::RealRemoved => "real_removed",
            ReuseReason::Quiesced => "quiesced",
            ReuseReason::Unavailable => "unavailable",
        }
    }
}

/// Real ids whose traffic counters are kept per worker. Ids are never reused, so a daemon that
/// has created more reals than this stops counting traffic for the newest ones (forwarding is
/// unaffected); at 5 counters × 8 bytes that is 2.5 MiB per worker.
pub const REAL_STATS_CAPACITY: usize = 1 << 16;

/// IPVS's per-destination statistics (what `ipvsadm -L --stats` shows). Outgoing = replies
/// the director rewrote (NAT); a DR director never sees replies.
#[derive(Default)]
pub struct RealCounters {
    pub conns: AtomicU64,
    pub in_packets: AtomicU64,
    pub in_bytes: AtomicU64,
    pub out_packets: AtomicU64,
    pub out_bytes: AtomicU64,
}

/// One counter with a single writer.
#[inline]
pub fn bump(c: &AtomicU64, by: u64) {
    c.store(
        c.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

#[derive(Default)]
pub struct WorkerTotals {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub forwarded: AtomicU64,
    pub tx_syscalls: AtomicU64,
    pub batches: AtomicU64,
    /// Receive-coalescing waits (`[ring] coalesce_us`).
    pub coalesce_waits: AtomicU64,
    pub flows: AtomicU64,
    pub flow_evictions: AtomicU64,
    /// New connections started on an old flow's five-tuple, by reason.
    pub flow_reuse: [AtomicU64; ReuseReason::COUNT],
    /// Busy time in microseconds (processing batches), for the per-worker load metric.
    pub busy_us: AtomicU64,
    /// ICMP fragmentation-needed sent to clients whose packets did not fit a tunnel, and
    /// those the rate limit held back.
    pub icmp_frag_needed: AtomicU64,
    pub icmp_rate_limited: AtomicU64,
    /// GSO super-frames cut into segments for a tunnel.
    pub segmented: AtomicU64,
}

/// Everything one worker counts. Written only by that worker; read by the control thread.
pub struct WorkerCounters {
    pub totals: CachePadded<WorkerTotals>,
    pub drops: CachePadded<[AtomicU64; DropReason::COUNT]>,
    pub reals: Box<[RealCounters]>,
}

impl WorkerCounters {
    pub fn new() -> WorkerCounters {
        WorkerCounters {
            totals: CachePadded::new(WorkerTotals::default()),
            drops: CachePadded::new(std::array::from_fn(|_| AtomicU64::new(0))),
            reals: (0..REAL_STATS_CAPACITY)
                .map(|_| RealCounters::default())
                .collect(),
        }
    }

    #[inline]
    pub fn count_drop(&self, reason: DropReason) {
        bump(&self.drops[reason as usize], 1);
    }

    #[inline]
    pub fn real(&self, id: RealId) -> Option<&RealCounters> {
        self.reals.get(id.index())
    }

    pub fn drop_count(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }
}

impl Default for WorkerCounters {
    fn default() -> Self {
        WorkerCounters::new()
    }
}
