//! The admin interface: `uvsadm` (ipvsadm's command line) ↔ the daemon.
//!
//! - [`proto`]: the versioned request/reply messages and their framing.
//! - [`apply`]: applying a list of changes to the service table, all or nothing.
//! - [`backend`]: how `uvsadm` reaches a director — the admin socket, or an in-memory table
//!   (tests, and `-S`/`-R` round trips without a daemon).
//! - [`server`]: the daemon side of the admin socket.
//! - [`ipvsadm`]: ipvsadm's argument syntax and its exact output formats.

pub mod apply;
pub mod backend;
pub mod ipvsadm;
pub mod proto;
pub mod server;
