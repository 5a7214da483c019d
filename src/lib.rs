//! uvs — Userspace Virtual Server: an LVS-DR (direct routing) load-balancing director that
//! runs entirely in userspace on AF_PACKET PACKET_MMAP rings.
//!
//! ```text
//! io::ring ──batch──► datapath::process (parse → flow lookup ─hit──────────► rewrite) ──► io::tx (sendmmsg)
//!                                                     └─miss─► sched::pick ─┘      ▲
//!                                                                                  │ neigh::cache (MAC slots)
//! control ──builds──► snapshot ──ArcSwap::store──► workers (one load per batch)
//! control ──writes──► neigh::cache slots;  ARP socket ◄──► neigh::arp;  /metrics;  kernel_filter (nf_tables)
//! ```
//!
//! Module map (dependencies point one way, down this list):
//! - [`wire`], [`model`]: bytes ↔ fields; validated configuration types. Depend on nothing.
//! - [`config`]: TOML and ipvsadm-save rules → [`model::ServiceTable`] + daemon options.
//! - [`sched`], [`snapshot`]: schedulers; the immutable compiled view workers read.
//! - [`io`]: the only module with raw syscalls and `unsafe` (rings, sockets, filter, sendmmsg).
//! - [`neigh`]: real-server MAC slots (worker read side) and ARP (control side).
//! - [`datapath`]: per-core workers; never depends on `control`.
//! - [`control`], [`kernel_filter`], [`metrics`], [`daemon`]: the control thread and set-up.
//! - [`lab`]: network-namespace labs for `uvs demo` and the integration tests.
//!
//! Invariants are stated where they live: `datapath` (flow affinity), `snapshot`
//! (publication), `model` (stable real ids), `datapath::process` (what DR rewrites),
//! `neigh::cache` (no MAC → counted drop), `io::ring` (ring ownership hand-off).

pub mod capture;
pub mod clock;
pub mod config;
pub mod conns;
pub mod control;
pub mod ctl;
pub mod daemon;
pub mod datapath;
pub mod doctor;
pub mod health;
pub mod interfaces;
pub mod io;
pub mod kernel_filter;
pub mod lab;
pub mod metrics;
pub mod model;
pub mod neigh;
pub mod sched;
pub mod snapshot;
pub mod sync;
pub mod trace;
pub mod vrrp;
pub mod wire;
