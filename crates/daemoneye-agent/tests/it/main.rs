//! Integration tests of daemoneye-agent.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types,
    missing_docs,
    unreachable_pub
)]

mod agent;
mod builtin;
mod cli;
mod e2e;
mod link;
mod metrics;
