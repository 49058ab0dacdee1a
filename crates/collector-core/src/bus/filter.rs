//! [`EventFilter`] and [`TopicPattern`]; with the `triggers` feature,
//! `CorrelationFilter`.
//!
//! # Topics
//! Every event has a topic of three dot-separated segments,
//! `events.<kind>.<detail>`:
//!
//! | kind | detail |
//! |---|---|
//! | `process` | the [`ProcessEventType`](crate::ProcessEventType) (`exec`, `exit`, ...) |
//! | `network` | the protocol, lowercase (`tcp`, `udp`) |
//! | `filesystem` | the operation (`create`, `modify`, ...) |
//! | `performance` | the subject's kind (`host`, `cpu`, `process`, ...) |
//! | `trigger_request` | the analysis type (`binary_hash`, ...) |
//!
//! A [`TopicPattern`] matches topics segment by segment: `*` or `+` match
//! exactly one segment, `#` or `**` match zero or more segments (anywhere in
//! the pattern). So `events.process.*` matches `events.process.exec`, and
//! `events.#` matches everything. A segment is either a wildcard or a
//! literal of `[A-Za-z0-9_-]`; anything else is refused with
//! [`FilterError::InvalidTopic`].

use std::fmt;

#[cfg(feature = "triggers")]
use serde::{Deserialize, Serialize};

#[cfg(feature = "triggers")]
use super::correlation::CorrelationMetadata;
use crate::event::{AnalysisType, CollectionEvent, EventKind, TriggerPriority};

/// The longest topic pattern accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;
/// The most segments a topic pattern may have.
pub const MAX_TOPIC_SEGMENTS: usize = 16;

/// A filter the builder could not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// A topic pattern is malformed.
    #[error("invalid topic pattern {pattern:?}: {reason}")]
    InvalidTopic {
        /// The refused pattern.
        pattern: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    One,
    Many,
}

/// A compiled topic pattern: dot-separated segments, `*` or `+` matching
/// one segment, `#` or `**` any number of segments, other segments
/// literally (`[A-Za-z0-9_-]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    source: String,
    segments: Vec<Segment>,
}

impl TopicPattern {
    /// Compiles `pattern`.
    ///
    /// # Errors
    /// [`FilterError::InvalidTopic`]: empty, too long, an empty segment, a
    /// segment mixing a wildcard with text, or a character outside
    /// `[A-Za-z0-9_-]`.
    pub fn new(pattern: &str) -> Result<Self, FilterError> {
        let bad = |reason| {
            Err(FilterError::InvalidTopic {
                pattern: pattern.chars().take(MAX_TOPIC_LEN).collect(),
                reason,
            })
        };
        if pattern.is_empty() {
            return bad("is empty");
        }
        if pattern.len() > MAX_TOPIC_LEN {
            return bad("is too long");
        }
        let mut segments = Vec::new();
        for seg in pattern.split('.') {
            if segments.len() == MAX_TOPIC_SEGMENTS {
                return bad("has too many segments");
            }
            segments.push(match seg {
                "" => return bad("has an empty segment"),
                "*" | "+" => Segment::One,
                "#" | "**" => Segment::Many,
                lit if lit
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
                {
                    Segment::Literal(lit.to_owned())
                }
                lit if lit.contains(['*', '+', '#']) => {
                    return bad("mixes a wildcard with text in one segment")
                }
                _ => return bad("has a character outside [A-Za-z0-9_-]"),
            });
        }
        Ok(Self {
            source: pattern.to_owned(),
            segments,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `topic` (dot-separated) matches.
    pub fn matches(&self, topic: &str) -> bool {
        match_segments(&self.segments, topic.split('.'))
    }

    fn matches_parts(&self, parts: &[&str]) -> bool {
        match_segments(&self.segments, parts.iter().copied())
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn match_segments<'a, I>(pattern: &[Segment], mut topic: I) -> bool
where
    I: Iterator<Item = &'a str> + Clone,
{
    let Some((first, rest)) = pattern.split_first() else {
        return topic.next().is_none();
    };
    match first {
        Segment::Many => {
            // Try every split point: zero, one, two... segments consumed.
            let mut it = topic;
            loop {
                if match_segments(rest, it.clone()) {
                    return true;
                }
                if it.next().is_none() {
                    return false;
                }
            }
        }
        Segment::One => topic.next().is_some() && match_segments(rest, topic),
        Segment::Literal(lit) => topic.next() == Some(lit.as_str()) && match_segments(rest, topic),
    }
}

pub(crate) const fn analysis_str(a: AnalysisType) -> &'static str {
    match a {
        AnalysisType::BinaryHash => "binary_hash",
        AnalysisType::MemoryAnalysis => "memory_analysis",
        AnalysisType::NetworkAnalysis => "network_analysis",
        AnalysisType::FilesystemAnalysis => "filesystem_analysis",
        AnalysisType::BehavioralAnalysis => "behavioral_analysis",
    }
}

/// The detail segment of an event's topic (see the [module docs](self)).
fn topic_detail(event: &CollectionEvent) -> &str {
    match event {
        CollectionEvent::Process(p) => p.event_type.as_str(),
        CollectionEvent::Network(n) => n.protocol.as_str(),
        CollectionEvent::Filesystem(f) => f.operation.as_str(),
        CollectionEvent::Performance(p) => p.subject.kind().as_str(),
        CollectionEvent::TriggerRequest(t) => analysis_str(t.analysis_type),
    }
}

/// The topic of an event: `events.<kind>.<detail>`.
pub fn topic_of(event: &CollectionEvent) -> String {
    let detail = topic_detail(event);
    let detail = if matches!(event, CollectionEvent::Network(_)) {
        detail.to_ascii_lowercase()
    } else {
        detail.to_owned()
    };
    format!("events.{}.{detail}", event.kind().as_str())
}

/// Selects events by correlation: pid, correlation ids, workflow stage, tags.
///
/// Every condition set must hold. Events published by the runtime start
/// their own chains (their correlation id is fresh, so only `by_pid` is
/// useful on them), except trigger requests, whose `correlation_id` is
/// their correlation id.
#[cfg(feature = "triggers")]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorrelationFilter {
    pids: Vec<u32>,
    correlation_id: Option<String>,
    parent_correlation_id: Option<String>,
    root_correlation_id: Option<String>,
    workflow_stage: Option<String>,
    tags: Vec<String>,
}

#[cfg(feature = "triggers")]
impl CorrelationFilter {
    /// A filter that lets everything through.
    pub fn new() -> Self {
        Self::default()
    }

    /// Events about `pid`.
    pub fn by_pid(pid: u32) -> Self {
        Self::new().with_pid(pid)
    }

    /// Events with this correlation id.
    pub fn by_correlation_id(id: impl Into<String>) -> Self {
        Self::new().with_correlation_id(id)
    }

    /// Events whose parent correlation id is `id`.
    pub fn by_parent_id(id: impl Into<String>) -> Self {
        Self::new().with_parent_id(id)
    }

    /// Events of the chain whose root correlation id is `id`.
    pub fn by_root_id(id: impl Into<String>) -> Self {
        Self::new().with_root_id(id)
    }

    /// Events of this workflow stage.
    pub fn by_workflow_stage(stage: impl Into<String>) -> Self {
        Self::new().with_workflow_stage(stage)
    }

    /// Events carrying this tag.
    pub fn by_tag(tag: impl Into<String>) -> Self {
        Self::new().with_tag(tag)
    }

    with_setters! {
        /// Also accept events about `pid` (pids are alternatives).
        with_pid(pid: u32) { pids.push(pid) }
        /// Require this correlation id.
        with_correlation_id(id: impl Into<String>) { correlation_id = Some(id.into()) }
        /// Require this parent correlation id.
        with_parent_id(id: impl Into<String>) { parent_correlation_id = Some(id.into()) }
        /// Require this root correlation id.
        with_root_id(id: impl Into<String>) { root_correlation_id = Some(id.into()) }
        /// Require this workflow stage.
        with_workflow_stage(stage: impl Into<String>) { workflow_stage = Some(stage.into()) }
        /// Require this tag (tags are all required).
        with_tag(tag: impl Into<String>) { tags.push(tag.into()) }
    }

    fn matches(&self, event: &CollectionEvent, meta: Option<&CorrelationMetadata>) -> bool {
        if !self.pids.is_empty() && !event.pid().is_some_and(|p| self.pids.contains(&p)) {
            return false;
        }
        if let Some(want) = &self.correlation_id {
            let id = match (meta, event) {
                (Some(m), _) => Some(m.correlation_id.as_str()),
                (None, CollectionEvent::TriggerRequest(t)) => Some(t.correlation_id.as_str()),
                (None, _) => None,
            };
            if id != Some(want.as_str()) {
                return false;
            }
        }
        let needs_meta = self.parent_correlation_id.is_some()
            || self.root_correlation_id.is_some()
            || self.workflow_stage.is_some()
            || !self.tags.is_empty();
        if !needs_meta {
            return true;
        }
        let Some(m) = meta else {
            return false;
        };
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        eq(
            &self.parent_correlation_id,
            m.parent_correlation_id.as_deref(),
        ) && eq(&self.root_correlation_id, Some(&m.root_correlation_id))
            && eq(&self.workflow_stage, m.workflow_stage.as_deref())
            && self.tags.iter().all(|t| m.tags.contains(t))
    }
}

/// Selects the events a subscriber receives.
///
/// Conditions of different kinds must all hold; values of one kind are
/// alternatives (two `with_event_type` calls accept either kind; two topic
/// patterns accept either). An empty filter lets everything through.
///
/// ```
/// use collector_core::{CorrelationFilter, EventFilter, EventKind, TopicPattern};
///
/// let filter = EventFilter::new()
///     .with_event_type(EventKind::Process)
///     .with_topic(TopicPattern::new("events.process.*")?)
///     .with_correlation_filter(CorrelationFilter::by_pid(1234));
/// assert!(TopicPattern::new("events..process").is_err());
/// # Ok::<(), collector_core::FilterError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    kinds: u8,
    pids: Vec<u32>,
    sources: Vec<String>,
    min_priority: Option<TriggerPriority>,
    metadata: Vec<(String, String)>,
    topics: Vec<TopicPattern>,
    target_collectors: Vec<String>,
    #[cfg(feature = "triggers")]
    correlation: Option<CorrelationFilter>,
}

const fn kind_bit(kind: EventKind) -> u8 {
    match kind {
        EventKind::Process => 1,
        EventKind::Network => 2,
        EventKind::Filesystem => 4,
        EventKind::Performance => 8,
        EventKind::TriggerRequest => 16,
    }
}

impl EventFilter {
    /// A filter that lets everything through.
    pub fn new() -> Self {
        Self::default()
    }

    with_setters! {
        /// Accept events of `kind`.
        with_event_type(kind: EventKind) { kinds |= kind_bit(kind) }
        /// Accept events about `pid`.
        with_pid(pid: u32) { pids.push(pid) }
        /// Accept events published by the source (or collector) named `name`.
        with_source(name: impl Into<String>) { sources.push(name.into()) }
        /// Accept only trigger requests of at least this priority (other kinds
        /// of events have no priority and are refused).
        with_min_priority(priority: TriggerPriority) { min_priority = Some(priority) }
        /// Accept events whose topic matches `pattern`.
        with_topic(pattern: TopicPattern) { topics.push(pattern) }
    }

    /// Require `key = value` in the event's metadata (a process event's
    /// `platform_metadata`, a trigger request's `metadata`; other kinds have
    /// none and are refused). All pairs are required.
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }

    /// Compiles `pattern` and accepts events whose topic matches it.
    ///
    /// # Errors
    /// [`FilterError::InvalidTopic`].
    pub fn try_with_topic(self, pattern: &str) -> Result<Self, FilterError> {
        Ok(self.with_topic(TopicPattern::new(pattern)?))
    }

    /// Accept only trigger requests addressed to `collector`.
    #[must_use]
    pub fn with_target_collector(mut self, collector: impl Into<String>) -> Self {
        self.target_collectors.push(collector.into());
        self
    }

    /// Also require `filter` to hold.
    #[cfg(feature = "triggers")]
    #[must_use]
    pub fn with_correlation_filter(mut self, filter: CorrelationFilter) -> Self {
        self.correlation = Some(filter);
        self
    }

    /// Whether `event` published by `source` passes, for events outside a
    /// bus (no correlation metadata, topic derived from the event).
    pub fn matches_event(&self, event: &CollectionEvent, source: &str) -> bool {
        let pass = self.matches_parts(event, None, source);
        #[cfg(feature = "triggers")]
        let pass = pass && self.matches_correlation(event, None);
        pass
    }

    /// Whether the correlation filter, if any, holds for `event` with `meta`.
    #[cfg(feature = "triggers")]
    pub(crate) fn matches_correlation(
        &self,
        event: &CollectionEvent,
        meta: Option<&CorrelationMetadata>,
    ) -> bool {
        self.correlation
            .as_ref()
            .is_none_or(|c| c.matches(event, meta))
    }

    /// Every condition but the correlation filter.
    pub(crate) fn matches_parts(
        &self,
        event: &CollectionEvent,
        topic: Option<&str>,
        source: &str,
    ) -> bool {
        let kind = event.kind();
        if self.kinds != 0 && self.kinds & kind_bit(kind) == 0 {
            return false;
        }
        if !self.pids.is_empty() && !event.pid().is_some_and(|p| self.pids.contains(&p)) {
            return false;
        }
        if !self.sources.is_empty() && !self.sources.iter().any(|s| s == source) {
            return false;
        }
        if let Some(min) = self.min_priority {
            match event {
                CollectionEvent::TriggerRequest(t) if t.priority >= min => {}
                _ => return false,
            }
        }
        if !self.target_collectors.is_empty() {
            match event {
                CollectionEvent::TriggerRequest(t)
                    if self.target_collectors.contains(&t.target_collector) => {}
                _ => return false,
            }
        }
        if !self.metadata.is_empty() {
            let map = match event {
                CollectionEvent::Process(p) => &p.platform_metadata,
                CollectionEvent::TriggerRequest(t) => &t.metadata,
                _ => return false,
            };
            if !self
                .metadata
                .iter()
                .all(|(k, v)| map.get(k).is_some_and(|have| have == v))
            {
                return false;
            }
        }
        if !self.topics.is_empty() {
            let hit = match topic {
                Some(t) => self.topics.iter().any(|p| p.matches(t)),
                None => {
                    let detail = topic_detail(event);
                    let lower;
                    let detail = if matches!(event, CollectionEvent::Network(_))
                        && detail.bytes().any(|b| b.is_ascii_uppercase())
                    {
                        lower = detail.to_ascii_lowercase();
                        lower.as_str()
                    } else {
                        detail
                    };
                    let parts = ["events", kind.as_str(), detail];
                    self.topics.iter().any(|p| p.matches_parts(&parts))
                }
            };
            if !hit {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;
    use std::time::SystemTime;

    use super::*;
    use crate::event::{ProcessEvent, ProcessEventType, TriggerRequest};

    fn exec(pid: u32) -> CollectionEvent {
        let mut p = ProcessEvent::new(pid, "sh");
        p.event_type = ProcessEventType::Exec;
        p.platform_metadata.insert("container".into(), "web".into());
        CollectionEvent::Process(p)
    }

    fn trigger(priority: TriggerPriority) -> CollectionEvent {
        CollectionEvent::TriggerRequest(TriggerRequest {
            trigger_id: "t1".into(),
            target_collector: "binary-hasher".into(),
            analysis_type: AnalysisType::BinaryHash,
            priority,
            target_pid: Some(7),
            target_path: None,
            correlation_id: "corr-1".into(),
            metadata: BTreeMap::new(),
            timestamp: SystemTime::now(),
        })
    }

    #[test]
    fn topic_wildcards_one_and_many_levels() {
        let p = TopicPattern::new("events.process.*").unwrap();
        assert!(p.matches("events.process.exec"));
        assert!(!p.matches("events.process"));
        assert!(!p.matches("events.process.exec.extra"));
        assert!(!p.matches("events.network.tcp"));
        let p = TopicPattern::new("events.+.exec").unwrap();
        assert!(p.matches("events.process.exec"));
        for many in ["events.#", "events.**"] {
            let p = TopicPattern::new(many).unwrap();
            assert!(p.matches("events"));
            assert!(p.matches("events.process.exec"));
            assert!(!p.matches("other.process"));
        }
        let p = TopicPattern::new("events.#.exec").unwrap();
        assert!(p.matches("events.exec"));
        assert!(p.matches("events.process.exec"));
        assert!(!p.matches("events.process.exit"));
    }

    #[test]
    fn malformed_topic_patterns_are_rejected() {
        for bad in [
            "",
            "events..x",
            ".events",
            "events.",
            "events.proc*",
            "a b",
            "ev#",
        ] {
            assert!(
                matches!(
                    TopicPattern::new(bad),
                    Err(FilterError::InvalidTopic { .. })
                ),
                "{bad:?} accepted"
            );
        }
        assert!(TopicPattern::new(&"a.".repeat(20)).is_err());
        assert!(TopicPattern::new(&"a".repeat(MAX_TOPIC_LEN + 1)).is_err());
    }

    #[test]
    fn topic_filter_uses_the_derived_topic() {
        let f = EventFilter::new()
            .try_with_topic("events.process.exec")
            .unwrap();
        assert!(f.matches_event(&exec(5), "procmond"));
        let mut snap = ProcessEvent::new(5, "sh");
        snap.event_type = ProcessEventType::Snapshot;
        assert!(!f.matches_event(&CollectionEvent::Process(snap), "procmond"));
        assert_eq!(topic_of(&exec(5)), "events.process.exec");
        assert_eq!(
            topic_of(&trigger(TriggerPriority::Low)),
            "events.trigger_request.binary_hash"
        );
    }

    #[test]
    fn kind_pid_source_metadata_and_priority_filters() {
        let f = EventFilter::new().with_event_type(EventKind::Process);
        assert!(f.matches_event(&exec(5), "a"));
        assert!(!f.matches_event(&trigger(TriggerPriority::High), "a"));
        let f = EventFilter::new().with_pid(5);
        assert!(f.matches_event(&exec(5), "a"));
        assert!(!f.matches_event(&exec(6), "a"));
        let f = EventFilter::new().with_source("procmond");
        assert!(f.matches_event(&exec(5), "procmond"));
        assert!(!f.matches_event(&exec(5), "netmond"));
        let f = EventFilter::new().with_metadata("container", "web");
        assert!(f.matches_event(&exec(5), "a"));
        assert!(!EventFilter::new()
            .with_metadata("container", "db")
            .matches_event(&exec(5), "a"));
        let f = EventFilter::new().with_min_priority(TriggerPriority::High);
        assert!(f.matches_event(&trigger(TriggerPriority::Critical), "a"));
        assert!(f.matches_event(&trigger(TriggerPriority::High), "a"));
        assert!(!f.matches_event(&trigger(TriggerPriority::Normal), "a"));
        assert!(!f.matches_event(&exec(5), "a"));
        let f = EventFilter::new().with_target_collector("binary-hasher");
        assert!(f.matches_event(&trigger(TriggerPriority::Low), "a"));
        assert!(!EventFilter::new()
            .with_target_collector("other")
            .matches_event(&trigger(TriggerPriority::Low), "a"));
    }

    #[cfg(feature = "triggers")]
    #[test]
    fn correlation_filter_needs_metadata_for_ids_stage_and_tags() {
        let by_corr = EventFilter::new()
            .with_correlation_filter(CorrelationFilter::by_correlation_id("corr-1"));
        assert!(by_corr.matches_event(&trigger(TriggerPriority::Low), "a"));
        assert!(!by_corr.matches_event(&exec(7), "a"));
        let root = CorrelationMetadata::with_id("root").with_workflow_stage("detection");
        let child = root.child().with_tag("hash");
        let f = CorrelationFilter::by_root_id("root")
            .with_parent_id("root")
            .with_workflow_stage("detection")
            .with_tag("hash");
        assert!(f.matches(&exec(1), Some(&child)));
        assert!(!f.matches(&exec(1), Some(&root)));
        assert!(!f.matches(&exec(1), None));
        assert!(CorrelationFilter::by_pid(1).matches(&exec(1), None));
        assert!(!CorrelationFilter::by_pid(2).matches(&exec(1), None));
    }

    proptest::proptest! {
        #[test]
        fn topic_parsing_never_panics(p in "\\PC{0,64}", t in "[a-z.]{0,32}") {
            if let Ok(pattern) = TopicPattern::new(&p) {
                let _ = pattern.matches(&t);
            }
        }

        #[test]
        fn a_literal_pattern_matches_exactly_itself(segs in proptest::collection::vec("[a-z_]{1,8}", 1..6)) {
            let topic = segs.join(".");
            let p = TopicPattern::new(&topic).unwrap();
            proptest::prop_assert!(p.matches(&topic));
            let longer = format!("{topic}.x");
            proptest::prop_assert!(!p.matches(&longer));
            let many = TopicPattern::new(&format!("{topic}.#")).unwrap();
            proptest::prop_assert!(many.matches(&topic));
        }
    }
}
