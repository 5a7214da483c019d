//! Per-core workers: parse → look up → (schedule) → rewrite → transmit.
//!
//! Invariant: a flow is always delivered to the same worker (PACKET_FANOUT_HASH on every
//! receive socket of an interface), so the flow table is per worker and lock-free. If the
//! fanout mode changes, this module must change.
//!
//! [`process::Forwarder`] is the pure per-frame decision (no I/O, unit-tested on byte arrays);
//! [`worker`] drives it over the rings.

pub mod coalesce;
pub mod counters;
pub mod flow_table;
pub mod process;
pub mod tap;
pub mod templates;
pub mod tunnel;
pub mod worker;
pub mod xmit;
