//! Monitor collectors: sources that keep watch over a domain by combining
//! periodic full collection with real-time events (procmond is one).

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::source::EventSource;

/// Settings every monitor collector shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorCollectorConfig {
    /// Time between full collections (reconciliation passes).
    #[serde(with = "humantime_serde")]
    pub collection_interval: Duration,
    /// Bound on events waiting between the kernel reader and enrichment.
    pub max_events_in_flight: usize,
    /// Use real-time kernel events when available (otherwise only periodic
    /// collection).
    pub enable_event_driven: bool,
}

impl Default for MonitorCollectorConfig {
    fn default() -> Self {
        Self {
            collection_interval: Duration::from_secs(30),
            max_events_in_flight: 1000,
            enable_event_driven: true,
        }
    }
}

impl MonitorCollectorConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.collection_interval.is_zero() {
            return Err(ConfigError::Invalid {
                field: "collection_interval",
                reason: "must be longer than zero".to_owned(),
            });
        }
        if self.max_events_in_flight == 0 {
            return Err(ConfigError::Invalid {
                field: "max_events_in_flight",
                reason: "must be greater than zero".to_owned(),
            });
        }
        Ok(())
    }
}

/// What a monitor collector has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MonitorCollectorStats {
    /// Full collections completed.
    pub collection_cycles: u64,
    /// Full collections that failed.
    pub collection_errors: u64,
    /// Events sent to the runtime.
    pub events_emitted: u64,
    /// Times the kernel reported lost events (each followed by a
    /// reconciliation pass).
    pub kernel_overruns: u64,
    /// Whether real-time events are flowing.
    pub realtime_active: bool,
}

impl MonitorCollectorStats {
    /// Builds stats from their parts.
    pub const fn new(
        collection_cycles: u64,
        collection_errors: u64,
        events_emitted: u64,
        kernel_overruns: u64,
        realtime_active: bool,
    ) -> Self {
        Self {
            collection_cycles,
            collection_errors,
            events_emitted,
            kernel_overruns,
            realtime_active,
        }
    }
}

/// An [`EventSource`] that monitors continuously and reports how it fares.
#[async_trait]
pub trait MonitorCollector: EventSource {
    /// Counters of the monitor's own work.
    fn monitor_stats(&self) -> MonitorCollectorStats;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn zero_values_are_refused_by_name() {
        MonitorCollectorConfig::default().validate().unwrap();
        let ok = MonitorCollectorConfig::default;
        for (bad, field) in [
            (
                MonitorCollectorConfig {
                    collection_interval: Duration::ZERO,
                    ..ok()
                },
                "collection_interval",
            ),
            (
                MonitorCollectorConfig {
                    max_events_in_flight: 0,
                    ..ok()
                },
                "max_events_in_flight",
            ),
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }
}
