//! Network-namespace integration tests: real namespaces, veths, nginx/curl/tcpdump, and the
//! `uvs` binary as a user runs it. They need root (CAP_NET_ADMIN, CAP_SYS_ADMIN). Without it
//! they print "skipping" and pass, except under `CI=true`, where they fail.
//!
//! Tests take a global lock (see `common::setup`): on a 2-core machine, several labs with a
//! director each would compete for CPU and make timing-sensitive checks flaky.

mod admin;
mod common;
mod crash;
mod demo;
mod doctor;
mod dr_basic;
mod ecmp;
mod frames;
mod fullnat;
mod fwmark;
mod ha;
mod health;
mod hostile;
mod labs;
mod malformed;
mod nat;
mod offloads;
mod packaging;
mod refusals;
mod reuse;
mod scale;
mod schedulers;
mod soak;
mod takeover;
mod trace;
mod tun;
mod two_arm;
mod uvsadm;
