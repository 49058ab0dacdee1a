//! The resource anomalies: the one judge of sustained CPU by one process,
//! memory growth of one process, a host-wide fork rate and a pressure
//! stall, with configurable thresholds ([`AnomalyConfig`]).
//!
//! perfmond feeds it its samples; the trigger system's
//! `ConditionType::ResourceAnomaly` conditions (behind the `triggers`
//! feature) are this same judge, fed with the CPU share and RSS of the
//! process events they evaluate, and match every performance event that
//! carries a [`PerformanceAnomaly`]. One set of thresholds, one meaning of
//! "anomalous", wherever it is judged.
//!
//! Each fires once per episode: sustained CPU again only after the process
//! dropped below the threshold, memory growth again only after a further
//! growth of the threshold, the host anomalies again only after the value
//! fell back below theirs. Every rule is a small state machine fed with
//! times and values ([`ProcWatch::observe`], [`HostWatch`]), so it is tested
//! without a clock or a process.
//!
//! None of them is a property of one event: each needs a duration, a
//! window or a rate across samples, and the fork and pressure rules are not
//! about a process at all. So the state lives with whoever keeps the
//! samples (perfmond's process table, the trigger manager's bounded pid
//! table), and the judge is pure.

use std::time::Duration;

use crate::event::{PerformanceAnomaly, PerformanceAnomalyKind, PsiResource};
use serde::{Deserialize, Serialize};

/// Thresholds of the anomalies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalyConfig {
    /// A process at or above this share of one core (percent)...
    pub sustained_cpu_percent: f64,
    /// ...for at least this long is an anomaly.
    #[serde(with = "humantime_serde")]
    pub sustained_cpu_for: Duration,
    /// A process whose RSS grows by more than this many bytes...
    pub memory_growth_bytes: u64,
    /// ...above its lowest RSS within this window is an anomaly.
    #[serde(with = "humantime_serde")]
    pub memory_growth_window: Duration,
    /// More forks per second than this, host-wide, is an anomaly.
    pub fork_rate_per_second: f64,
    /// A PSI `some avg10` (percent of time some task stalled) above this,
    /// for CPU, memory or I/O, is an anomaly.
    pub psi_some_avg10_percent: f64,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self {
            sustained_cpu_percent: 90.0,
            sustained_cpu_for: Duration::from_secs(60),
            memory_growth_bytes: 1 << 30,
            memory_growth_window: Duration::from_secs(300),
            fork_rate_per_second: 500.0,
            psi_some_avg10_percent: 60.0,
        }
    }
}

impl AnomalyConfig {
    /// The threshold of `kind`, in the unit of the metric it judges.
    pub fn threshold(&self, kind: PerformanceAnomalyKind) -> f64 {
        match kind {
            PerformanceAnomalyKind::SustainedCpu => self.sustained_cpu_percent,
            PerformanceAnomalyKind::MemoryGrowth => self.memory_growth_bytes as f64,
            PerformanceAnomalyKind::ForkRate => self.fork_rate_per_second,
            // `PerformanceAnomalyKind` is non-exhaustive; the pressure stall
            // is the last kind perfmond judges.
            _ => self.psi_some_avg10_percent,
        }
    }

    /// The anomaly of `kind` that held for `duration`, with its threshold.
    pub fn anomaly(&self, kind: PerformanceAnomalyKind, duration: Duration) -> PerformanceAnomaly {
        PerformanceAnomaly {
            kind,
            threshold: self.threshold(kind),
            duration,
        }
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`](crate::ConfigError::Invalid) naming the bad field.
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        let invalid = |field, reason: &str| crate::ConfigError::Invalid {
            field,
            reason: reason.to_owned(),
        };
        let percent = |v: f64| v.is_finite() && v > 0.0;
        if !percent(self.sustained_cpu_percent) {
            return Err(invalid("sustained_cpu_percent", "must be above zero"));
        }
        if self.memory_growth_bytes == 0 {
            return Err(invalid("memory_growth_bytes", "must be above zero"));
        }
        if self.memory_growth_window.is_zero() {
            return Err(invalid("memory_growth_window", "must be longer than zero"));
        }
        if !percent(self.fork_rate_per_second) {
            return Err(invalid("fork_rate_per_second", "must be above zero"));
        }
        if !percent(self.psi_some_avg10_percent) || self.psi_some_avg10_percent > 100.0 {
            return Err(invalid("psi_some_avg10_percent", "must be in (0, 100]"));
        }
        Ok(())
    }
}

/// The anomaly state of one process, kept with it in the process table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcWatch {
    /// Since when (time since boot) its share has been at or above the
    /// threshold.
    busy_since: Option<Duration>,
    /// Whether this busy episode was reported.
    cpu_fired: bool,
    /// Its lowest RSS within the window, and when it was seen.
    rss_low: Option<(Duration, u64)>,
}

/// An anomaly of one process found by [`ProcWatch::observe`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fired {
    /// [`PerformanceAnomalyKind::SustainedCpu`] or
    /// [`PerformanceAnomalyKind::MemoryGrowth`].
    pub kind: PerformanceAnomalyKind,
    /// The share now, or the growth in bytes.
    pub value: f64,
    /// How long it has been busy, or the time the growth took.
    pub duration: Duration,
}

impl ProcWatch {
    /// Feeds one sample: `share` (percent of a core, `None` when unknown)
    /// measured over the interval that began at `since` and ends at `now`,
    /// and the RSS now (`None` when unknown: the memory judge waits).
    /// Returns what fired, at most one of each kind.
    pub fn observe(
        &mut self,
        config: &AnomalyConfig,
        since: Duration,
        now: Duration,
        share: Option<f64>,
        rss: Option<u64>,
    ) -> [Option<Fired>; 2] {
        let mut out = [None, None];
        match share {
            Some(s) if s >= config.sustained_cpu_percent => {
                let start = *self.busy_since.get_or_insert(since);
                let busy = now.saturating_sub(start);
                if !self.cpu_fired && busy >= config.sustained_cpu_for {
                    self.cpu_fired = true;
                    out[0] = Some(Fired {
                        kind: PerformanceAnomalyKind::SustainedCpu,
                        value: s,
                        duration: busy,
                    });
                }
            }
            Some(_) => {
                self.busy_since = None;
                self.cpu_fired = false;
            }
            None => {}
        }
        let Some(rss) = rss else {
            return out;
        };
        match self.rss_low {
            Some((at, low))
                if rss >= low && now.saturating_sub(at) <= config.memory_growth_window =>
            {
                let growth = rss - low;
                if growth > config.memory_growth_bytes {
                    out[1] = Some(Fired {
                        kind: PerformanceAnomalyKind::MemoryGrowth,
                        value: growth as f64,
                        duration: now.saturating_sub(at),
                    });
                    // Again only after a further growth of the threshold.
                    self.rss_low = Some((now, rss));
                }
            }
            // A new low, or the low aged out of the window.
            _ => self.rss_low = Some((now, rss)),
        }
        out
    }
}

/// The state of the host-wide anomalies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostWatch {
    fork_fired: bool,
    psi_fired: [bool; PsiResource::ALL.len()],
}

impl HostWatch {
    /// Feeds the fork rate; `Some(rate)` when it fires.
    pub fn forks(&mut self, config: &AnomalyConfig, rate: f64) -> Option<f64> {
        edge(
            &mut self.fork_fired,
            rate > config.fork_rate_per_second,
            rate,
        )
    }

    /// Feeds one resource's `some avg10`; `Some(avg10)` when it fires.
    pub fn psi(&mut self, config: &AnomalyConfig, r: PsiResource, avg10: f64) -> Option<f64> {
        let i = PsiResource::ALL.iter().position(|x| *x == r).unwrap_or(0);
        edge(
            &mut self.psi_fired[i],
            avg10 > config.psi_some_avg10_percent,
            avg10,
        )
    }
}

/// `Some(value)` on a rising edge of `above`.
fn edge(fired: &mut bool, above: bool, value: f64) -> Option<f64> {
    let rising = above && !*fired;
    *fired = above;
    rising.then_some(value)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::float_cmp)]

    use super::*;

    const fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn cfg() -> AnomalyConfig {
        AnomalyConfig {
            sustained_cpu_percent: 90.0,
            sustained_cpu_for: s(60),
            memory_growth_bytes: 100,
            memory_growth_window: s(30),
            ..AnomalyConfig::default()
        }
    }

    fn cpu(w: &mut ProcWatch, since: u64, now: u64, share: f64) -> Option<Fired> {
        w.observe(&cfg(), s(since), s(now), Some(share), None)[0]
    }

    #[test]
    fn sustained_cpu_fires_once_after_the_duration_and_rearms_below() {
        let mut w = ProcWatch::default();
        // Busy from t=0 (the start of the first busy interval).
        for t in (10..60).step_by(10) {
            assert_eq!(cpu(&mut w, t - 10, t, 99.0), None, "t={t}");
        }
        let fired = cpu(&mut w, 50, 60, 95.0).unwrap();
        assert_eq!(
            (fired.kind, fired.value, fired.duration),
            (PerformanceAnomalyKind::SustainedCpu, 95.0, s(60))
        );
        assert_eq!(cpu(&mut w, 60, 70, 99.0), None, "one report per episode");
        assert_eq!(cpu(&mut w, 70, 80, 10.0), None);
        assert_eq!(cpu(&mut w, 80, 90, 99.0), None, "a new episode starts over");
        assert!(cpu(&mut w, 130, 140, 99.0).is_some());
    }

    #[test]
    fn an_unknown_share_neither_starts_nor_ends_an_episode() {
        let mut w = ProcWatch::default();
        assert_eq!(cpu(&mut w, 0, 30, 99.0), None);
        assert_eq!(w.observe(&cfg(), s(30), s(40), None, None)[0], None);
        assert!(cpu(&mut w, 40, 60, 99.0).is_some());
    }

    #[test]
    fn a_dip_below_the_threshold_resets_the_clock() {
        let mut w = ProcWatch::default();
        assert_eq!(cpu(&mut w, 0, 50, 99.0), None);
        assert_eq!(cpu(&mut w, 50, 55, 89.9), None);
        assert_eq!(cpu(&mut w, 55, 100, 99.0), None, "busy only since 55");
        assert!(cpu(&mut w, 100, 115, 99.0).is_some());
    }

    fn rss(w: &mut ProcWatch, now: u64, bytes: u64) -> Option<f64> {
        w.observe(&cfg(), s(now), s(now), None, Some(bytes))[1].map(|f| f.value)
    }

    #[test]
    fn memory_growth_within_the_window_fires_and_rearms_after_more_growth() {
        let mut w = ProcWatch::default();
        assert_eq!(rss(&mut w, 0, 1000), None);
        assert_eq!(rss(&mut w, 10, 1090), None);
        let mut again = w;
        let fired = again.observe(&cfg(), s(20), s(20), None, Some(1101))[1].unwrap();
        assert_eq!(fired.duration, s(20), "grown since the low at 0");
        assert_eq!(rss(&mut w, 20, 1101), Some(101.0));
        assert_eq!(rss(&mut w, 25, 1150), None, "rearmed at 1101");
        assert_eq!(rss(&mut w, 29, 1202), Some(101.0));
    }

    #[test]
    fn an_unknown_rss_neither_sets_a_low_nor_grows_from_one() {
        let mut w = ProcWatch::default();
        assert_eq!(w.observe(&cfg(), s(0), s(0), None, None)[1], None);
        assert_eq!(rss(&mut w, 5, 5000), None, "the first known RSS is the low");
        assert_eq!(w.observe(&cfg(), s(6), s(6), None, None)[1], None);
        assert_eq!(rss(&mut w, 7, 5050), None);
        assert_eq!(rss(&mut w, 8, 5101), Some(101.0));
    }

    #[test]
    fn slow_growth_outside_the_window_does_not_fire() {
        let mut w = ProcWatch::default();
        let mut bytes = 1000;
        for t in (0..300).step_by(20) {
            assert_eq!(rss(&mut w, t, bytes), None, "t={t}");
            bytes += 60; // 60 per 20 s: more than 100 only over 40 s > window
        }
        // A drop sets a new low to grow from.
        assert_eq!(rss(&mut w, 400, 500), None);
        assert_eq!(rss(&mut w, 410, 700), Some(200.0));
    }

    #[test]
    fn host_anomalies_fire_on_rising_edges() {
        let c = AnomalyConfig {
            fork_rate_per_second: 100.0,
            psi_some_avg10_percent: 50.0,
            ..AnomalyConfig::default()
        };
        let mut h = HostWatch::default();
        assert_eq!(h.forks(&c, 50.0), None);
        assert_eq!(h.forks(&c, 150.0), Some(150.0));
        assert_eq!(h.forks(&c, 200.0), None);
        assert_eq!(h.forks(&c, 10.0), None);
        assert_eq!(h.forks(&c, 101.0), Some(101.0));
        assert_eq!(h.psi(&c, PsiResource::Io, 70.0), Some(70.0));
        assert_eq!(
            h.psi(&c, PsiResource::Cpu, 70.0),
            Some(70.0),
            "per resource"
        );
        assert_eq!(h.psi(&c, PsiResource::Io, 80.0), None);
    }

    #[test]
    fn each_kind_carries_its_configured_threshold() {
        let c = cfg();
        let a = c.anomaly(PerformanceAnomalyKind::MemoryGrowth, s(5));
        assert_eq!((a.threshold, a.duration), (100.0, s(5)));
        assert_eq!(c.threshold(PerformanceAnomalyKind::SustainedCpu), 90.0);
        assert_eq!(c.threshold(PerformanceAnomalyKind::ForkRate), 500.0);
        assert_eq!(c.threshold(PerformanceAnomalyKind::PsiStall), 60.0);
    }

    #[test]
    fn bad_thresholds_are_refused_by_name() {
        AnomalyConfig::default().validate().unwrap();
        for (bad, field) in [
            (
                AnomalyConfig {
                    sustained_cpu_percent: f64::NAN,
                    ..AnomalyConfig::default()
                },
                "sustained_cpu_percent",
            ),
            (
                AnomalyConfig {
                    memory_growth_window: Duration::ZERO,
                    ..AnomalyConfig::default()
                },
                "memory_growth_window",
            ),
            (
                AnomalyConfig {
                    psi_some_avg10_percent: 101.0,
                    ..AnomalyConfig::default()
                },
                "psi_some_avg10_percent",
            ),
        ] {
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }
}
