//! Executable hashing (being written).
