//! End-to-end tests over real sockets, on SQLite and on Postgres.

mod abuse;
mod admin_limits;
mod allow_lists;
mod api_keys;
mod audit;
mod bad_input;
mod bootstrap;
mod commands;
mod connections;
mod console;
mod crash;
mod credits;
mod expiry;
mod grpcurl;
mod isolation;
mod partition;
mod proxies;
mod reseal;
mod secrets;
mod shutdown;
mod sidecar;
mod ssrf;
mod tls;
mod unix_socket;
mod usage;
mod webhooks;
