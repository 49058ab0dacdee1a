//! The one constructor of perfmond's events ([`event`]). The metrics
//! themselves, their units and subjects are collector-core's
//! [`PerformanceMetric`] and [`PerformanceSubject`]: one list for every
//! collector, the wire, the store and the rules.

use std::time::SystemTime;

use collector_core::{PerformanceEvent, PerformanceMetric, PerformanceSubject};

/// The event of one sample of `metric` on `subject`. A value that is not
/// finite (a rate over no time) is not an event: `None`.
pub fn event(
    metric: PerformanceMetric,
    value: f64,
    subject: PerformanceSubject,
    at: SystemTime,
) -> Option<PerformanceEvent> {
    // The runtime names it.
    value
        .is_finite()
        .then(|| PerformanceEvent::new(metric, value, subject, at))
}

#[cfg(test)]
mod tests {
    use collector_core::PerformanceUnit;

    use super::*;

    #[test]
    fn events_refuse_what_is_not_finite() {
        let at = SystemTime::now();
        assert!(event(
            PerformanceMetric::CpuTotal,
            f64::NAN,
            PerformanceSubject::Host,
            at
        )
        .is_none());
        let subject = PerformanceSubject::Process {
            pid: 7,
            process_key: None,
        };
        let e = event(PerformanceMetric::ProcessRss, 4096.0, subject, at)
            .unwrap_or_else(|| unreachable!());
        assert_eq!(
            (e.metric.as_str(), e.unit(), e.pid()),
            ("process.rss", PerformanceUnit::Bytes, Some(7))
        );
    }
}
