//! collector-core
