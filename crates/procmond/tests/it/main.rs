//! Integration tests of procmond (one binary, several modules).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unreachable_pub)]

mod connector;
