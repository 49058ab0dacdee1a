//! Proc connector tests against the real kernel (being written).
