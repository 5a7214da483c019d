//! Real-server IP → MAC: the lock-free slots workers read ([`cache`]) and the ARP protocol
//! work the control thread does ([`arp`]).
//!
//! Heads up! Before working on this module read RFC 826 and the parts of RFC 1122 (2.3.2)
//! that discuss ARP cache validation and flooding limits.

pub mod arp;
pub mod cache;
