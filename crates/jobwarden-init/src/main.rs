//! jobwarden-init: the in-container supervisor (see its issue; not yet implemented).

fn main() {}
