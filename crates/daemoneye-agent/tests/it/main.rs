//! Integration tests of daemoneye-agent.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod builtin;
