//! Identities shared by every component.
//!
//! PIDs are reused, so a pid alone does not name a process. A process is named
//! by (boot id, pid, start time in clock ticks since boot): the kernel never
//! gives two processes of one boot the same pid *and* start tick, and the boot
//! id separates boots. [`ProcessKey`] renders that triple as one string that is
//! carried on every process event, record and alert.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where every DaemonEye component keeps its state by default:
/// `/var/lib/daemoneye` as root, `$XDG_STATE_HOME/daemoneye` (or
/// `~/.local/state/daemoneye`) otherwise.
pub fn default_state_dir() -> std::path::PathBuf {
    use std::path::PathBuf;
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/daemoneye");
    }
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir)
        .join("daemoneye")
}

/// Where the kernel publishes the id of the current boot.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// Errors from parsing or reading the shared models.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A boot id was not a 36-character hyphenated UUID.
    #[error("invalid boot id {input:?}: expected a hyphenated uuid")]
    InvalidBootId {
        /// The text that was refused.
        input: String,
    },
    /// A process key was not `boot_id:pid:start_ticks`.
    #[error("invalid process key {input:?}: {reason}")]
    InvalidProcessKey {
        /// The text that was refused.
        input: String,
        /// Which part was wrong.
        reason: &'static str,
    },
    /// An event id was not `run-seq` (16 hex digits, then a positive number).
    #[error(
        "invalid event id {input:?}: expected 16 hex digits, '-', and a sequence number above 0"
    )]
    InvalidEventId {
        /// The text that was refused.
        input: String,
    },
    /// The boot id could not be read from `/proc`.
    #[error("cannot read boot id from {path}")]
    ReadBootId {
        /// The file that was read.
        path: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The kernel's id of the current boot (a random UUID chosen at boot).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BootId([u8; 16]);

impl BootId {
    /// Builds a boot id from its 16 raw bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The 16 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Reads the id of the running boot from [`BOOT_ID_PATH`].
    ///
    /// # Errors
    /// [`ModelError::ReadBootId`] when the file cannot be read (not Linux, or
    /// `/proc` not mounted) and [`ModelError::InvalidBootId`] when its content
    /// is not a UUID.
    pub fn current() -> Result<Self, ModelError> {
        let text =
            std::fs::read_to_string(BOOT_ID_PATH).map_err(|source| ModelError::ReadBootId {
                path: BOOT_ID_PATH,
                source,
            })?;
        text.trim().parse()
    }
}

impl FromStr for BootId {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || ModelError::InvalidBootId {
            input: s.to_owned(),
        };
        let bytes = s.as_bytes();
        if bytes.len() != 36 {
            return Err(invalid());
        }
        let mut out = [0u8; 16];
        let mut nibbles = 0usize;
        for (i, &b) in bytes.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if b != b'-' {
                    return Err(invalid());
                }
                continue;
            }
            let v = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                _ => return Err(invalid()),
            };
            out[nibbles / 2] |= if nibbles % 2 == 0 { v << 4 } else { v };
            nibbles += 1;
        }
        Ok(Self(out))
    }
}

impl BootId {
    /// The text form (`8-4-4-4-12` lower-case hex digits) into `out`.
    fn encode(&self, out: &mut [u8; 36]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut at = 0;
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                out[at] = b'-';
                at += 1;
            }
            out[at] = HEX[usize::from(b >> 4)];
            out[at + 1] = HEX[usize::from(b & 0xf)];
            at += 2;
        }
    }
}

// Written whole, not digit by digit through the formatter: a key is
// formatted for every event the agent judges and stores.
impl fmt::Display for BootId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0u8; 36];
        self.encode(&mut text);
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

/// The stable identity of one process: boot id, pid and start time in clock
/// ticks since boot (field 22 of `/proc/<pid>/stat`).
///
/// Rendered (and serialized) as `boot_id:pid:start_ticks`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessKey {
    /// The boot the process belongs to.
    pub boot_id: BootId,
    /// The process id.
    pub pid: u32,
    /// Start time in clock ticks since boot.
    pub start_ticks: u64,
}

impl ProcessKey {
    /// Builds a key from its parts.
    pub const fn new(boot_id: BootId, pid: u32, start_ticks: u64) -> Self {
        Self {
            boot_id,
            pid,
            start_ticks,
        }
    }
}

impl fmt::Display for ProcessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.boot_id, f)?;
        f.write_str(":")?;
        f.write_str(itoa::Buffer::new().format(self.pid))?;
        f.write_str(":")?;
        f.write_str(itoa::Buffer::new().format(self.start_ticks))
    }
}

impl FromStr for ProcessKey {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| ModelError::InvalidProcessKey {
            input: s.to_owned(),
            reason,
        };
        let mut parts = s.split(':');
        let (Some(boot), Some(pid), Some(start), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("expected three ':'-separated parts"));
        };
        let boot_id = boot.parse().map_err(|_| invalid("bad boot id"))?;
        let pid = pid.parse().map_err(|_| invalid("bad pid"))?;
        let start_ticks = start.parse().map_err(|_| invalid("bad start ticks"))?;
        Ok(Self::new(boot_id, pid, start_ticks))
    }
}

/// Names one event: the run of the collector runtime that accepted it (a
/// number chosen when the runtime starts: its start time in nanoseconds) and
/// its place in that run, counted from 1 without gaps across all the run's
/// sources. Unique on one host; with the host's name, across a fleet.
///
/// Rendered (and serialized) as `run-seq`, the run in 16 hex digits:
/// `187a3c5e9b2d4f10-42`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId {
    /// The runtime run that accepted the event.
    pub run: u64,
    /// Its place in that run, from 1.
    pub seq: std::num::NonZeroU64,
}

impl EventId {
    /// Builds an id from its parts.
    pub const fn new(run: u64, seq: std::num::NonZeroU64) -> Self {
        Self { run, seq }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}", self.run, self.seq)
    }
}

impl FromStr for EventId {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed = s.split_once('-').and_then(|(run, seq)| {
            let hex = run.len() == 16 && run.bytes().all(|b| b.is_ascii_hexdigit());
            let digits = !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit());
            if !(hex && digits) {
                return None;
            }
            Some(Self::new(
                u64::from_str_radix(run, 16).ok()?,
                seq.parse().ok()?,
            ))
        });
        parsed.ok_or_else(|| ModelError::InvalidEventId {
            input: s.to_owned(),
        })
    }
}

/// `Debug` as `Name(text)`: the type's name around its `Display` form.
macro_rules! debug_as_text {
    ($($ty:ident),+) => {$(
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($ty), "({})"), self)
            }
        }
    )+};
}

debug_as_text!(BootId, ProcessKey, EventId);

/// `Serialize` and `Deserialize` as the type's text form (`Display` and
/// `FromStr`).
macro_rules! serde_as_text {
    ($($ty:ty),+) => {$(
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )+};
}

serde_as_text!(ProcessKey, EventId);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn debug_is_the_name_around_the_text() {
        let boot = BootId::from_bytes([0x5a; 16]);
        let key = ProcessKey::new(boot, 7, 9);
        let id = EventId::new(1, std::num::NonZeroU64::new(2).unwrap());
        assert_eq!(format!("{boot:?}"), format!("BootId({boot})"));
        assert_eq!(
            format!("{key:?}"),
            "ProcessKey(5a5a5a5a-5a5a-5a5a-5a5a-5a5a5a5a5a5a:7:9)"
        );
        assert_eq!(format!("{id:?}"), "EventId(0000000000000001-2)");
    }

    #[test]
    fn boot_id_rejects_malformed_text() {
        for bad in [
            "",
            "5f1b2c3d0a1b4c2d8e9f0123456789ab",
            "5f1b2c3d-0a1b-4c2d-8e9f-0123456789aZ",
            "5f1b2c3d-0a1b-4c2d-8e9f_0123456789ab",
            "5f1b2c3d-0a1b-4c2d-8e9f-0123456789abc",
        ] {
            assert!(bad.parse::<BootId>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn event_id_text_round_trips_and_rejects_wrong_shapes() {
        let id = EventId::new(
            0x187a_3c5e_9b2d_4f10,
            std::num::NonZeroU64::new(42).unwrap(),
        );
        assert_eq!(id.to_string(), "187a3c5e9b2d4f10-42");
        assert_eq!("187a3c5e9b2d4f10-42".parse::<EventId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"187a3c5e9b2d4f10-42\"");
        assert_eq!(serde_json::from_str::<EventId>(&json).unwrap(), id);
        for bad in [
            "",
            "187a3c5e9b2d4f10",
            "187a3c5e9b2d4f10-0",
            "187a3c5e9b2d4f10-",
            "187a3c5e9b2d4f1-4",
            "187a3c5e9b2d4f10-+4",
            "187a3c5e9b2d4f1g-4",
            "187a3c5e9b2d4f10-4-5",
            "187a3c5e9b2d4f10-18446744073709551616",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn process_key_rejects_wrong_shapes() {
        let boot = "5f1b2c3d-0a1b-4c2d-8e9f-0123456789ab";
        for bad in [
            String::new(),
            format!("{boot}:1"),
            format!("{boot}:1:2:3"),
            format!("{boot}:-1:2"),
            format!("{boot}:1:x"),
            "nope:1:2".to_owned(),
        ] {
            assert!(bad.parse::<ProcessKey>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn current_boot_id_matches_proc() {
        let Ok(text) = std::fs::read_to_string(BOOT_ID_PATH) else {
            eprintln!("skipping: {BOOT_ID_PATH} is not readable on this host");
            return;
        };
        assert_eq!(
            BootId::current().unwrap().to_string(),
            text.trim().to_ascii_lowercase()
        );
    }

    #[test]
    fn keys_of_one_pid_at_two_start_times_differ() {
        // The regression this type exists for: a reused pid must not alias.
        let boot = BootId::from_bytes([7; 16]);
        assert_ne!(ProcessKey::new(boot, 100, 5), ProcessKey::new(boot, 100, 6));
        assert_ne!(
            ProcessKey::new(boot, 100, 5).to_string(),
            ProcessKey::new(boot, 100, 6).to_string()
        );
    }

    proptest! {
        #[test]
        fn process_key_round_trips_through_text_and_json(
            bytes in any::<[u8; 16]>(), pid in any::<u32>(), start in any::<u64>()
        ) {
            let key = ProcessKey::new(BootId::from_bytes(bytes), pid, start);
            prop_assert_eq!(key.to_string().parse::<ProcessKey>().unwrap(), key);
            let json = serde_json::to_string(&key).unwrap();
            prop_assert_eq!(serde_json::from_str::<ProcessKey>(&json).unwrap(), key);
        }

        #[test]
        fn process_key_text_is_hex_dashes_and_decimals(
            bytes in any::<[u8; 16]>(), pid in any::<u32>(), start in any::<u64>()
        ) {
            use std::fmt::Write as _;
            let mut hex = String::new();
            for (i, b) in bytes.iter().enumerate() {
                let dash = if matches!(i, 4 | 6 | 8 | 10) { "-" } else { "" };
                write!(hex, "{dash}{b:02x}").unwrap();
            }
            let key = ProcessKey::new(BootId::from_bytes(bytes), pid, start);
            prop_assert_eq!(key.boot_id.to_string(), hex.clone());
            prop_assert_eq!(key.to_string(), format!("{hex}:{pid}:{start}"));
        }

        #[test]
        fn boot_id_parser_never_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<BootId>();
        }
    }
}
