//! Webhooks end to end: a real receiver on loopback, real gRPC, both
//! databases; one topic a file.

mod catalog;
mod concurrency;
mod delivery;
mod disabling;
mod endpoints;
mod key_notices;
mod legacy;
mod listing;
mod retries;
mod rules;
mod signing;
