//! Integration tests of collector-core (one binary, several modules).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    missing_docs,
    unreachable_pub
)]

mod accounting;
mod bus;
mod conformance;
mod ipc;
mod runtime;
mod sources;
