//! Correlation metadata carried by every [`BusEvent`](super::BusEvent).

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::BusError;

/// Upper bound on the number of tags of one event.
pub const MAX_CORRELATION_TAGS: usize = 32;
/// Upper bound on the length of a correlation id, stage name or tag, in bytes.
pub const MAX_CORRELATION_FIELD_LEN: usize = 256;

/// Ties bus events together: the events, triggers and analysis results of
/// one investigation share a root id; each step names its parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorrelationMetadata {
    /// This event's correlation id.
    pub correlation_id: String,
    /// The correlation id of the event this one follows from.
    pub parent_correlation_id: Option<String>,
    /// The correlation id of the first event of the chain (its own id when
    /// it starts one).
    pub root_correlation_id: String,
    /// Assigned by the bus at publication: strictly increasing per bus.
    pub sequence: u64,
    /// The analysis workflow stage this event belongs to, if any.
    pub workflow_stage: Option<String>,
    /// Free-form labels (bounded).
    pub tags: BTreeSet<String>,
}

impl Default for CorrelationMetadata {
    fn default() -> Self {
        Self::new()
    }
}

impl CorrelationMetadata {
    /// Metadata that starts a new chain: a fresh id, which is also the root.
    pub fn new() -> Self {
        Self::with_id(new_correlation_id())
    }

    /// Metadata for an event with a known id (for example a trigger
    /// request's `correlation_id`), starting a chain.
    pub fn with_id(id: impl Into<String>) -> Self {
        let id = id.into();
        Self {
            root_correlation_id: id.clone(),
            correlation_id: id,
            parent_correlation_id: None,
            sequence: 0,
            workflow_stage: None,
            tags: BTreeSet::new(),
        }
    }

    /// Metadata for an event that follows from `self`: a fresh id, `self` as
    /// parent, the same root, stage and tags.
    #[must_use]
    pub fn child(&self) -> Self {
        Self {
            correlation_id: new_correlation_id(),
            parent_correlation_id: Some(self.correlation_id.clone()),
            root_correlation_id: self.root_correlation_id.clone(),
            sequence: 0,
            workflow_stage: self.workflow_stage.clone(),
            tags: self.tags.clone(),
        }
    }

    with_setters! {
        /// Sets the workflow stage.
        with_workflow_stage(stage: impl Into<String>) { workflow_stage = Some(stage.into()) }
        /// Adds a tag.
        with_tag(tag: impl Into<String>) { tags.insert(tag.into()) }
    }

    /// Checks the bounds: ids, stage and tags non-empty where required and
    /// at most [`MAX_CORRELATION_FIELD_LEN`] bytes, at most
    /// [`MAX_CORRELATION_TAGS`] tags.
    ///
    /// # Errors
    /// [`BusError::InvalidCorrelation`] naming the field.
    pub fn validate(&self) -> Result<(), BusError> {
        let bad = |field: &'static str, reason: &'static str| {
            Err(BusError::InvalidCorrelation { field, reason })
        };
        let too_long = |s: &str| s.len() > MAX_CORRELATION_FIELD_LEN;
        if self.correlation_id.is_empty() || too_long(&self.correlation_id) {
            return bad("correlation_id", "is empty or too long");
        }
        if self.root_correlation_id.is_empty() || too_long(&self.root_correlation_id) {
            return bad("root_correlation_id", "is empty or too long");
        }
        if self
            .parent_correlation_id
            .as_deref()
            .is_some_and(|p| p.is_empty() || too_long(p))
        {
            return bad("parent_correlation_id", "is empty or too long");
        }
        if self
            .workflow_stage
            .as_deref()
            .is_some_and(|p| p.is_empty() || too_long(p))
        {
            return bad("workflow_stage", "is empty or too long");
        }
        if self.tags.len() > MAX_CORRELATION_TAGS {
            return bad("tags", "has too many entries");
        }
        if self.tags.iter().any(|t| t.is_empty() || too_long(t)) {
            return bad("tags", "has an empty or oversized tag");
        }
        Ok(())
    }
}

/// A new correlation id: unique within this process and, with a random
/// per-process prefix, very likely across processes.
pub fn new_correlation_id() -> String {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let prefix = *PREFIX.get_or_init(|| {
        // `RandomState` is seeded from the OS; no RNG crate needed.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix:016x}-{n:012x}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn child_keeps_root_and_names_parent() {
        let root = CorrelationMetadata::new().with_workflow_stage("collection");
        let child = root.child();
        assert_ne!(child.correlation_id, root.correlation_id);
        assert_eq!(
            child.parent_correlation_id.as_ref(),
            Some(&root.correlation_id)
        );
        assert_eq!(child.root_correlation_id, root.correlation_id);
        assert_eq!(child.child().root_correlation_id, root.correlation_id);
        assert_eq!(child.workflow_stage.as_deref(), Some("collection"));
    }

    #[test]
    fn oversized_metadata_is_rejected_naming_the_field() {
        let mut m = CorrelationMetadata::new();
        for i in 0..=MAX_CORRELATION_TAGS {
            m.tags.insert(i.to_string());
        }
        assert!(matches!(
            m.validate(),
            Err(BusError::InvalidCorrelation { field: "tags", .. })
        ));
        let m = CorrelationMetadata::with_id("x".repeat(MAX_CORRELATION_FIELD_LEN + 1));
        assert!(m.validate().is_err());
        CorrelationMetadata::new().with_tag("t").validate().unwrap();
    }
}
