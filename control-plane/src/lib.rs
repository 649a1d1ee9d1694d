//! Keyplane control plane.
pub mod crypto;
pub mod error;
