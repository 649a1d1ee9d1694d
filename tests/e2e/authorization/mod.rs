//! The one authorization decision, tested from outside: the table of every
//! admin RPC and console action against every kind of credential
//! (`docs/authorization.md`), and the rule that nothing yields a token or
//! widens a key beyond what the caller holds.

mod console_matrix;
mod credentials;
mod escalation;
mod grpc_matrix;
mod table;
