//! `procmond`: the process collector binary (being written).

fn main() {}
