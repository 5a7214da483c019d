//! The admin interface: `uvsadm` (ipvsadm's command line) ↔ the daemon. It sits above the
//! control thread: the daemon side turns requests into `crate::control` operations.
//!
//! - [`proto`]: the versioned request/reply messages and their framing.
//! - [`server`]: the daemon side of the admin socket (accepting, reading, authorising).
//! - [`serve`]: carrying out a request with the control thread's operations.
//! - [`backend`]: how `uvsadm` reaches a director — the admin socket, or an in-memory table
//!   (tests, and `-S`/`-R` round trips without a daemon).
//! - [`report`]: the text of `uvs health` and `uvs status`.
//! - [`ipvsadm`]: ipvsadm's argument syntax and its exact output formats.

pub mod backend;
pub mod ipvsadm;
pub mod proto;
pub mod report;
pub mod serve;
pub mod server;
pub mod takeover;
