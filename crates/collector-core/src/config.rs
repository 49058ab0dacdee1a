//! [`CollectorConfig`]: the runtime's settings, from builders or TOML.
//!
//! ```
//! use collector_core::{CollectorConfig, WhenFull};
//!
//! let config = CollectorConfig::from_toml_str(
//!     r#"
//!     event_buffer_size = 4096
//!     shutdown_timeout = "5s"
//!     when_full = "drop_newest"
//!     "#,
//! )?;
//! assert_eq!(config.event_buffer_size, 4096);
//! assert_eq!(config.when_full, WhenFull::DropNewest);
//! # Ok::<(), collector_core::ConfigError>(())
//! ```

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::common::first_zero;

/// What a bounded queue does when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Wait for room: backpressure reaches the source, nothing is dropped here.
    #[default]
    Block,
    /// Drop the events that do not fit, and count them.
    DropNewest,
}

/// An invalid configuration, naming the field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A field has a value the runtime cannot work with.
    #[error("invalid `{field}`: {reason}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// The TOML did not parse or named an unknown field.
    #[error("cannot parse collector config")]
    Parse(#[source] toml::de::Error),
    /// The config file could not be read.
    #[error("cannot read collector config {path}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Settings of the [`Collector`](crate::Collector) runtime.
///
/// Build with [`CollectorConfig::new`] and the `with_*` methods, or load TOML
/// with [`from_toml_str`](Self::from_toml_str) (unknown fields are refused;
/// durations are written `"30s"`, `"250ms"`). [`validate`](Self::validate)
/// runs before anything starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// How many sources may be registered.
    pub max_event_sources: usize,
    /// Capacity, in events, of each source's intake queue and of each
    /// subscriber's queue.
    pub event_buffer_size: usize,
    /// Intake fill level (events) at which a source is reported as under
    /// backpressure; at most `event_buffer_size`.
    pub backpressure_threshold: usize,
    /// Most events handed to subscribers in one batch.
    pub max_batch_size: usize,
    /// How long the runtime may wait to fill a batch; zero hands over at once
    /// whatever is ready (lowest latency).
    #[serde(with = "humantime_serde")]
    pub batch_timeout: Duration,
    /// What a full subscriber queue does.
    pub when_full: WhenFull,
    /// How long a source's first health check may take to succeed before it
    /// is reported as not ready. It never cancels the source.
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// Time from the shutdown request to the runtime's return: sources stop,
    /// buffers drain, stragglers are aborted at the deadline.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How often every source's health check runs.
    #[serde(with = "humantime_serde")]
    pub health_check_interval: Duration,
    /// Make `debug` the default log level (`RUST_LOG` still wins).
    pub enable_debug_logging: bool,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            max_event_sources: 16,
            event_buffer_size: 1000,
            backpressure_threshold: 800,
            max_batch_size: 256,
            batch_timeout: Duration::ZERO,
            when_full: WhenFull::Block,
            startup_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
            health_check_interval: Duration::from_secs(60),
            enable_debug_logging: false,
        }
    }
}

impl CollectorConfig {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    with_setters! {
        /// Sets [`max_event_sources`](Self::max_event_sources).
        with_max_event_sources(n: usize) { max_event_sources = n }
        /// Sets [`backpressure_threshold`](Self::backpressure_threshold).
        with_backpressure_threshold(n: usize) { backpressure_threshold = n }
        /// Sets [`max_batch_size`](Self::max_batch_size).
        with_max_batch_size(n: usize) { max_batch_size = n }
        /// Sets [`batch_timeout`](Self::batch_timeout).
        with_batch_timeout(d: Duration) { batch_timeout = d }
        /// Sets [`when_full`](Self::when_full).
        with_when_full(policy: WhenFull) { when_full = policy }
        /// Sets [`startup_timeout`](Self::startup_timeout).
        with_startup_timeout(d: Duration) { startup_timeout = d }
        /// Sets [`shutdown_timeout`](Self::shutdown_timeout).
        with_shutdown_timeout(d: Duration) { shutdown_timeout = d }
        /// Sets [`health_check_interval`](Self::health_check_interval).
        with_health_check_interval(d: Duration) { health_check_interval = d }
        /// Sets [`enable_debug_logging`](Self::enable_debug_logging).
        with_debug_logging(on: bool) { enable_debug_logging = on }
    }

    /// Sets [`event_buffer_size`](Self::event_buffer_size); the backpressure
    /// threshold follows at 80 % unless set explicitly afterwards.
    #[must_use]
    pub fn with_event_buffer_size(mut self, n: usize) -> Self {
        self.event_buffer_size = n;
        self.backpressure_threshold = n - n / 5;
        self
    }

    /// Parses and validates TOML.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(ConfigError::Parse)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a TOML file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// Checks every field; the runtime refuses to start with an invalid config.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, reason: String| Err(ConfigError::Invalid { field, reason });
        if let Some(field) = first_zero([
            ("max_event_sources", self.max_event_sources),
            ("event_buffer_size", self.event_buffer_size),
            ("max_batch_size", self.max_batch_size),
            ("backpressure_threshold", self.backpressure_threshold),
        ]) {
            return bad(field, "must be greater than zero".into());
        }
        // tokio's bounded channels refuse capacities above this.
        if self.event_buffer_size > tokio::sync::Semaphore::MAX_PERMITS >> 3 {
            return bad("event_buffer_size", "is too large".into());
        }
        for (field, value) in [
            ("backpressure_threshold", self.backpressure_threshold),
            ("max_batch_size", self.max_batch_size),
        ] {
            if value > self.event_buffer_size {
                let buffer = self.event_buffer_size;
                return bad(
                    field,
                    format!("{value} is above event_buffer_size {buffer}"),
                );
            }
        }
        if let Some(field) = first_zero([
            ("startup_timeout", self.startup_timeout),
            ("shutdown_timeout", self.shutdown_timeout),
            ("health_check_interval", self.health_check_interval),
        ]) {
            return bad(field, "must be longer than zero".into());
        }
        if self.batch_timeout >= self.shutdown_timeout {
            return bad(
                "batch_timeout",
                "must be shorter than shutdown_timeout".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]

    use proptest::prelude::*;

    use super::*;

    fn field_of(err: ConfigError) -> &'static str {
        match err {
            ConfigError::Invalid { field, .. } => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_builders_set_fields() {
        CollectorConfig::default().validate().unwrap();
        let c = CollectorConfig::new()
            .with_max_event_sources(32)
            .with_event_buffer_size(2000)
            .with_shutdown_timeout(Duration::from_secs(60))
            .with_health_check_interval(Duration::from_secs(120))
            .with_debug_logging(true);
        c.validate().unwrap();
        assert_eq!(c.max_event_sources, 32);
        assert_eq!(c.event_buffer_size, 2000);
        assert_eq!(c.backpressure_threshold, 1600);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(60));
        assert_eq!(c.health_check_interval, Duration::from_secs(120));
        assert!(c.enable_debug_logging);
    }

    #[test]
    fn zero_sizes_and_durations_name_the_field() {
        let base = CollectorConfig::default;
        assert_eq!(
            field_of(base().with_max_event_sources(0).validate().unwrap_err()),
            "max_event_sources"
        );
        assert_eq!(
            field_of(base().with_max_batch_size(0).validate().unwrap_err()),
            "max_batch_size"
        );
        assert_eq!(
            field_of(
                base()
                    .with_shutdown_timeout(Duration::ZERO)
                    .validate()
                    .unwrap_err()
            ),
            "shutdown_timeout"
        );
        assert_eq!(
            field_of(
                base()
                    .with_health_check_interval(Duration::ZERO)
                    .validate()
                    .unwrap_err()
            ),
            "health_check_interval"
        );
        let mut c = base();
        c.event_buffer_size = 0;
        assert_eq!(field_of(c.validate().unwrap_err()), "event_buffer_size");
    }

    #[test]
    fn threshold_above_buffer_is_refused() {
        let c = CollectorConfig::default()
            .with_event_buffer_size(100)
            .with_backpressure_threshold(101);
        let err = c.validate().unwrap_err();
        assert!(
            err.to_string()
                .contains("101 is above event_buffer_size 100"),
            "{err}"
        );
        assert_eq!(field_of(err), "backpressure_threshold");
        let c = CollectorConfig::default()
            .with_event_buffer_size(100)
            .with_max_batch_size(200);
        assert_eq!(field_of(c.validate().unwrap_err()), "max_batch_size");
    }

    #[test]
    fn toml_refuses_unknown_fields_and_bad_values() {
        assert!(matches!(
            CollectorConfig::from_toml_str("event_bufer_size = 10").unwrap_err(),
            ConfigError::Parse(_)
        ));
        assert!(matches!(
            CollectorConfig::from_toml_str("shutdown_timeout = \"soon\"").unwrap_err(),
            ConfigError::Parse(_)
        ));
        assert!(matches!(
            CollectorConfig::from_toml_str("when_full = \"drop_oldest\"").unwrap_err(),
            ConfigError::Parse(_)
        ));
        assert_eq!(
            field_of(CollectorConfig::from_toml_str("event_buffer_size = 0").unwrap_err()),
            "event_buffer_size"
        );
        let c = CollectorConfig::from_toml_str("health_check_interval = \"250ms\"").unwrap();
        assert_eq!(c.health_check_interval, Duration::from_millis(250));
    }

    #[test]
    fn missing_file_is_a_read_error() {
        assert!(matches!(
            CollectorConfig::from_file("/nonexistent/collector.toml").unwrap_err(),
            ConfigError::Read { .. }
        ));
    }

    proptest! {
        #[test]
        fn valid_configs_round_trip_through_toml(
            sources in 1usize..64, buffer in 1usize..100_000, batch_frac in 0.0f64..1.0,
            shutdown_ms in 1u64..100_000, health_ms in 1u64..100_000, drop in any::<bool>(),
        ) {
            let batch = ((buffer as f64 * batch_frac) as usize).max(1);
            let c = CollectorConfig::new()
                .with_max_event_sources(sources)
                .with_event_buffer_size(buffer)
                .with_backpressure_threshold(batch)
                .with_max_batch_size(batch)
                .with_shutdown_timeout(Duration::from_millis(shutdown_ms))
                .with_health_check_interval(Duration::from_millis(health_ms))
                .with_when_full(if drop { WhenFull::DropNewest } else { WhenFull::Block });
            prop_assert!(c.validate().is_ok());
            let text = toml::to_string(&c).unwrap();
            prop_assert_eq!(CollectorConfig::from_toml_str(&text).unwrap(), c);
        }

        #[test]
        fn toml_parser_never_panics(text in "\\PC{0,200}") {
            let _ = CollectorConfig::from_toml_str(&text);
        }
    }
}
