//! The control plane's one error type and its one mapping to `tonic::Status`.

use std::time::Duration;

use sea_orm::{DbErr, RuntimeErr, SqlErr};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// Result alias used across the control plane.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller sent bad input; each violation names a request field.
    #[error("invalid argument: {}", summary(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// No credentials, or credentials that are not valid.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// Valid credentials that may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The resource does not exist in the caller's org.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The resource (or one with the same unique name) already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// A per-org quota is used up.
    #[error("{0}")]
    LimitReached(String),
    /// Too many requests from this caller; it may retry after `retry_after`.
    #[error("{message}; retry in {}", humantime::format_duration(*.retry_after))]
    Throttled { message: &'static str, retry_after: Duration },
    /// An OAuth provider refused the request (e.g. `invalid_grant`).
    #[error("{0}")]
    ProviderRejected(String),
    /// An OAuth provider is down, timed out or answered nonsense.
    #[error("{0}")]
    ProviderUnavailable(String),
    /// The resource's state does not allow the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A dependency cannot be reached now (e.g. the key-event log could not
    /// be read in time); the caller should retry.
    #[error("{0}")]
    Unavailable(String),
    /// The receiving side of a stream went away (nothing to report to it).
    #[error("the stream was closed by its receiver")]
    StreamClosed,
    /// A database call failed.
    #[error("database: {0}")]
    Database(#[from] DbErr),
    /// Argon2 hashing failed (bad parameters or a stored hash that does not parse).
    #[error("password hashing: {0}")]
    Hashing(String),
    /// A sealed value could not be opened: tampered, or sealed under an unknown key.
    #[error("sealed value: {0}")]
    Sealing(String),
    /// Start-up configuration is wrong; the message says how to fix it.
    #[error("configuration: {0}")]
    Config(String),
    /// File or socket I/O failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A gRPC server failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A console page could not be rendered.
    #[error("template: {0}")]
    Template(#[from] askama::Error),
}

impl Error {
    /// One bad field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    /// The first field violation of an INVALID_ARGUMENT, or any other error
    /// as a violation of `field`: the refusal of one record of a batch.
    pub fn first_violation(self, field: &str) -> FieldViolation {
        match self {
            Self::InvalidArgument(mut violations) if !violations.is_empty() => violations.swap_remove(0),
            other => FieldViolation::new(field, other.to_string()),
        }
    }
}

fn summary(violations: &[FieldViolation]) -> String {
    violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ")
}

/// What kind of failure an [`Error`] is, decided once here for both
/// transports: the gRPC code of the API and the HTTP status of the console.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    AlreadyExists,
    /// A quota is used up or the caller is over its rate.
    ResourceExhausted,
    FailedPrecondition,
    /// A dependency cannot be reached now; retry shortly.
    Unavailable,
    Cancelled,
    /// A stored secret could not be opened.
    DataLoss,
    /// Our fault: logged, and the caller is told only that.
    Internal,
}

impl ErrorCode {
    pub fn grpc(self) -> Code {
        match self {
            ErrorCode::InvalidArgument => Code::InvalidArgument,
            ErrorCode::Unauthenticated => Code::Unauthenticated,
            ErrorCode::PermissionDenied => Code::PermissionDenied,
            ErrorCode::NotFound => Code::NotFound,
            ErrorCode::AlreadyExists => Code::AlreadyExists,
            ErrorCode::ResourceExhausted => Code::ResourceExhausted,
            ErrorCode::FailedPrecondition => Code::FailedPrecondition,
            ErrorCode::Unavailable => Code::Unavailable,
            ErrorCode::Cancelled => Code::Cancelled,
            ErrorCode::DataLoss => Code::DataLoss,
            ErrorCode::Internal => Code::Internal,
        }
    }

    pub fn http(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::AlreadyExists | ErrorCode::FailedPrecondition => 409,
            ErrorCode::ResourceExhausted => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Cancelled => 499,
            ErrorCode::DataLoss | ErrorCode::Internal => 500,
        }
    }
}

impl Error {
    /// The one classification of every error (no wildcard: a new variant
    /// must be classified here).
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Error::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Error::PermissionDenied(_) => ErrorCode::PermissionDenied,
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::AlreadyExists(_) => ErrorCode::AlreadyExists,
            Error::LimitReached(_) | Error::Throttled { .. } => ErrorCode::ResourceExhausted,
            Error::FailedPrecondition(_) | Error::ProviderRejected(_) => ErrorCode::FailedPrecondition,
            Error::Unavailable(_) | Error::ProviderUnavailable(_) => ErrorCode::Unavailable,
            Error::StreamClosed => ErrorCode::Cancelled,
            Error::Sealing(_) => ErrorCode::DataLoss,
            Error::Database(db) if is_unique_violation(db) => ErrorCode::AlreadyExists,
            Error::Database(db) if is_unavailable(db) => ErrorCode::Unavailable,
            Error::Database(_)
            | Error::Hashing(_)
            | Error::Config(_)
            | Error::Io(_)
            | Error::Transport(_)
            | Error::Template(_) => ErrorCode::Internal,
        }
    }

    /// What a caller is told: the message, except for internal errors,
    /// which are logged (inside the request span, which carries the request
    /// id) and replaced by a generic sentence; an unreachable database is
    /// logged as a warning.
    pub fn public_message(&self) -> String {
        match (self.code(), self) {
            (_, Error::InvalidArgument(violations)) => format!("invalid argument: {}", summary(violations)),
            (_, Error::NotFound(what)) => format!("{what} not found"),
            (_, Error::StreamClosed) => "the stream was closed".into(),
            (_, Error::Sealing(message)) => {
                tracing::error!(error = %message, "a sealed value could not be opened");
                format!("a stored secret could not be opened ({message}); check the master-key file or restore the row")
            }
            (ErrorCode::AlreadyExists, Error::Database(_)) => "a resource with this identity already exists".into(),
            (ErrorCode::Unavailable, Error::Database(db)) => {
                tracing::warn!(error = %db, "database unavailable");
                DATABASE_UNAVAILABLE.into()
            }
            (ErrorCode::Internal, internal) => {
                tracing::error!(error = %internal, "internal error");
                "internal error; see the server log for this request id".into()
            }
            (_, other) => other.to_string(),
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let code = error.code();
        let message = error.public_message();
        match error {
            Error::InvalidArgument(violations) => {
                Status::with_error_details(code.grpc(), message, ErrorDetails::with_bad_request(violations))
            }
            Error::Throttled { message, retry_after } => {
                // Whole milliseconds, at least one: a zero delay would invite a busy loop.
                let retry_after = Duration::from_millis((retry_after.as_millis() as u64).max(1));
                let message = format!("{message}; retry in {}", humantime::format_duration(retry_after));
                Status::with_error_details(code.grpc(), message, ErrorDetails::with_retry_info(Some(retry_after)))
            }
            Error::Unavailable(_) | Error::Database(_) if code == ErrorCode::Unavailable => unavailable(message),
            _ => Status::new(code.grpc(), message),
        }
    }
}

/// What `RetryInfo` suggests to callers while a dependency is unreachable.
const RETRY_AFTER_UNAVAILABLE: Duration = Duration::from_secs(1);
/// The message of every call refused because the database cannot be reached.
pub const DATABASE_UNAVAILABLE: &str = "the database is unavailable; retry shortly";

/// UNAVAILABLE with `RetryInfo`: the caller should retry shortly.
fn unavailable(message: String) -> Status {
    Status::with_error_details(Code::Unavailable, message, ErrorDetails::with_retry_info(Some(RETRY_AFTER_UNAVAILABLE)))
}

pub(crate) fn is_unique_violation(error: &DbErr) -> bool {
    matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

/// Whether `error` means the database cannot be reached (pool timeout, a
/// refused or dropped connection, a server shutting down), as opposed to a
/// query the database rejected.
pub(crate) fn is_unavailable(error: &DbErr) -> bool {
    use sea_orm::sqlx::Error as Sqlx;
    let runtime = match error {
        DbErr::ConnectionAcquire(_) => return true,
        DbErr::Conn(runtime) | DbErr::Exec(runtime) | DbErr::Query(runtime) => runtime,
        _ => return false,
    };
    let RuntimeErr::SqlxError(sqlx) = runtime else {
        return false;
    };
    match sqlx.as_ref() {
        Sqlx::Io(_)
        | Sqlx::Tls(_)
        | Sqlx::Protocol(_)
        | Sqlx::PoolTimedOut
        | Sqlx::PoolClosed
        | Sqlx::WorkerCrashed => true,
        // Postgres: connection exceptions (08…), shutdown or start-up in
        // progress (57P01–57P03), too many connections (53300).
        Sqlx::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}
