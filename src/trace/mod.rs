//! `uvs trace` and `uvs capture`: what the workers decided, streamed to a client.
//!
//! The workers' side (rings of fixed-size records, the cost rules) is
//! `crate::datapath::tap`; this module is everything after the rings:
//! - [`session`]: attached sessions on the control thread and their writer threads;
//! - [`text`]: a record as a trace line, with the scheduler's reasons in words;
//! - [`capture`]: records as pcapng blocks (received and sent frames, side by side);
//! - [`events`]: VRRP and ARP events as trace lines;
//! - [`client`]: reading a stream on the client side.

pub mod capture;
pub mod client;
pub mod events;
pub mod session;
pub mod text;
