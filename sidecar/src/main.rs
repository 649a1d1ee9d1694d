//! Keyplane sidecar (work in progress).
fn main() {}
