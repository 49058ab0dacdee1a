//! Integration tests of collector-core (one binary, several modules).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unreachable_pub)]

mod accounting;
mod conformance;
mod runtime;
mod sources;
