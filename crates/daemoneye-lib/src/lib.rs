//! Shared ground between DaemonEye collectors and the agent.
//!
//! - [`models`]: identities every component agrees on, such as the stable
//!   [`ProcessKey`](models::ProcessKey) that survives PID reuse.
//!
//! The protobuf protocol and its framing codec live here too (see the IPC
//! issue); this crate has no async runtime and no I/O beyond small reads of
//! `/proc`, so every part of it can be tested without privileges.
//!
//! ```
//! use daemoneye_lib::models::{BootId, ProcessKey};
//!
//! let boot: BootId = "5f1b2c3d-0a1b-4c2d-8e9f-0123456789ab".parse()?;
//! let key = ProcessKey::new(boot, 4242, 1_234_567);
//! assert_eq!(key.to_string(), "5f1b2c3d-0a1b-4c2d-8e9f-0123456789ab:4242:1234567");
//! assert_eq!(key.to_string().parse::<ProcessKey>()?, key);
//! # Ok::<(), daemoneye_lib::models::ModelError>(())
//! ```

pub mod models;
pub mod proto;
