//! Integration tests of procmond (one binary, several modules).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types,
    missing_docs,
    unreachable_pub
)]

mod cli;
mod connector;
mod ipc;
mod source;
#[path = "../support/mod.rs"]
mod support;
