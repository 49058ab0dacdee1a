//! The netlink process connector (being written).
