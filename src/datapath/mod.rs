//! Per-core workers: parse → look up → (schedule) → rewrite → transmit.
//!
//! Invariant: both directions of a flow are always delivered to the same worker (the fanout
//! program on every receive socket of an interface hashes the client's endpoint: a request's
//! source, a NAT reply's destination, an ICMP error's quoted packet), so the flow table is
//! per worker and lock-free. If the fanout program changes, this module must change.
//!
//! [`process::Forwarder`] is the pure per-frame decision (no I/O, unit-tested on byte arrays);
//! [`worker`] drives it over the rings.

pub mod coalesce;
pub mod counters;
pub mod flow_table;
pub mod fullnat;
pub mod process;
pub mod tap;
pub mod templates;
pub mod tunnel;
pub mod worker;
pub mod xmit;
