//! Health of sources and of the runtime as a whole.

use daemoneye_lib::proto::HealthState;
use serde::Serialize;

/// The state of one source as the runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SourceHealth {
    /// Registered; `start` called, first health check not yet answered.
    Starting,
    /// Running and its last health check succeeded.
    Healthy,
    /// Running, but its last health check failed or timed out.
    Degraded(String),
    /// `start` returned an error or panicked.
    Failed(String),
    /// `start` returned `Ok` before shutdown was requested.
    Completed,
    /// Stopped by shutdown.
    Stopped,
    /// Still running at the shutdown deadline, and aborted.
    Aborted,
}

impl SourceHealth {
    /// Whether the source's `start` is still running.
    pub fn is_running(&self) -> bool {
        matches!(self, Self::Starting | Self::Healthy | Self::Degraded(_))
    }
}

/// The runtime's overall verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HealthStatus {
    /// Every source is healthy (or starting, or ended cleanly).
    Healthy,
    /// Some source is degraded, failed or aborted, but not all.
    Degraded,
    /// Every source failed or was aborted (or none is left collecting
    /// because of failures).
    Unhealthy,
}

/// Health of the runtime and of each source.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HealthReport {
    /// The overall verdict.
    pub status: HealthStatus,
    /// Each source by name.
    pub sources: Vec<(&'static str, SourceHealth)>,
}

impl HealthReport {
    pub(crate) fn from_sources(sources: Vec<(&'static str, SourceHealth)>) -> Self {
        let bad = |h: &SourceHealth| matches!(h, SourceHealth::Failed(_) | SourceHealth::Aborted);
        let failed = sources.iter().filter(|(_, h)| bad(h)).count();
        let degraded = sources
            .iter()
            .filter(|(_, h)| matches!(h, SourceHealth::Degraded(_)))
            .count();
        let status = if failed > 0 && failed == sources.len() {
            HealthStatus::Unhealthy
        } else if failed + degraded > 0 {
            HealthStatus::Degraded
        } else {
            HealthStatus::Healthy
        };
        Self { status, sources }
    }
}

/// A health state's lowercase name, as reports and the CLI print it.
pub fn state_name(s: HealthState) -> &'static str {
    match s {
        HealthState::Unspecified => "unknown",
        HealthState::Healthy => "healthy",
        HealthState::Degraded => "degraded",
        HealthState::Unhealthy => "unhealthy",
        HealthState::Unreachable => "unreachable",
        HealthState::Starting => "starting",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_follows_the_worst_sources() {
        let h = |v: Vec<SourceHealth>| {
            HealthReport::from_sources(v.into_iter().map(|s| ("s", s)).collect()).status
        };
        assert_eq!(
            h(vec![SourceHealth::Healthy, SourceHealth::Starting]),
            HealthStatus::Healthy
        );
        assert_eq!(
            h(vec![
                SourceHealth::Healthy,
                SourceHealth::Degraded("x".into())
            ]),
            HealthStatus::Degraded
        );
        assert_eq!(
            h(vec![
                SourceHealth::Healthy,
                SourceHealth::Failed("x".into())
            ]),
            HealthStatus::Degraded
        );
        assert_eq!(
            h(vec![
                SourceHealth::Failed("x".into()),
                SourceHealth::Aborted
            ]),
            HealthStatus::Unhealthy
        );
        assert_eq!(h(vec![]), HealthStatus::Healthy);
    }
}
