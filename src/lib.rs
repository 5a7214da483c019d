//! uvs — Userspace Virtual Server: an LVS load-balancing director that runs entirely in
//! userspace on AF_PACKET PACKET_MMAP rings.
//!
//! ```text
//! io::ring ──batch──► datapath::process (parse → flow lookup ─hit──────────────► xmit) ──► io::tx (sendmmsg)
//!                                                     └─miss─► sched::pick ─┘     ▲
//!                                                                                 │ neigh::cache (MAC slots)
//! control ──builds──► snapshot ──ArcSwap::store──► workers (one load per batch)
//! control ──writes──► neigh::cache slots;  ARP socket ◄──► neigh::arp;  /metrics;  kernel_filter (nf_tables)
//! ctl::server ──AdminPort──► control::admin (typed operations)
//! ```
//!
//! Module map, bottom up. A module uses only modules listed before it (checked by
//! `tests/layers.rs`), so dependencies point one way:
//! 1. Leaf types: [`wire`] (bytes ↔ fields), [`proxy_protocol`] (the PROXY header),
//!    [`model`] (validated configuration, and [`model::change`], the changes to it),
//!    [`flow`] (flow keys, TCP states, timeouts).
//! 2. [`io`]: every syscall and every `unsafe` of the crate (rings, sockets, transmit, mmap,
//!    signals, clocks); knows nothing about load balancing.
//! 3. Building blocks: [`conns`] (live connection counts), [`interfaces`],
//!    [`kernel_filter`] (the nftables tables), [`neigh`] (next-hop MAC slots and ARP),
//!    [`sched`] (one file per IPVS scheduler).
//! 4. The forwarding path: [`snapshot`] (the immutable compiled view workers read), [`sync`]
//!    (IPVS connection sync and the hooks workers read for HA), [`datapath`] (per-core
//!    workers: decide, transmit per forwarding method, trace taps).
//! 5. Control-thread services: [`health`] (checks), [`vrrp`], [`announce`] (which VIPs to
//!    announce to the routing daemon), [`metrics`] (the exporter), [`trace`] (trace and
//!    capture sessions over the workers' taps).
//! 6. [`control`]: the control thread; owns all mutable shared state, publishes snapshots.
//! 7. Front ends: [`ctl`] (the admin protocol, uvsadm, the daemon's request handling),
//!    [`config`] (TOML, ipvsadm rules, keepalived.conf, ldirectord.cf), [`daemon`] (`uvs run`
//!    set-up), [`doctor`], [`lab`] (network-namespace labs, the demo).
//!
//! Invariants are stated where they live: `datapath` (flow affinity), `snapshot`
//! (publication), `model` (stable real ids), `datapath::xmit` (what each method rewrites),
//! `neigh::cache` (no MAC → counted drop), `io::ring` (ring ownership hand-off),
//! `io::tx` (a queued frame is sent before its ring block is released).

#![deny(unsafe_code)]

pub mod wire;

pub mod proxy_protocol;

pub mod model;

pub mod flow;

#[allow(unsafe_code)]
pub mod io;

pub mod conns;

pub mod interfaces;

pub mod kernel_filter;

pub mod neigh;

pub mod sched;

pub mod snapshot;

pub mod sync;

pub mod datapath;

pub mod health;

pub mod vrrp;

pub mod announce;

pub mod metrics;

pub mod trace;

pub mod control;

pub mod ctl;

pub mod config;

pub mod daemon;

pub mod doctor;

pub mod lab;
