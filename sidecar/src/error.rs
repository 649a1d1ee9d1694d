//! The sidecar's one error type and its one mapping to `tonic::Status`.

use tonic::Status;

/// Everything that can go wrong in the sidecar outside a check decision
/// (checks never fail: they answer allow or deny).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Start-up configuration is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// File or socket I/O failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A gRPC server or channel failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The control plane did not answer in time.
    #[error("the control plane did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The control plane answered a call with an error.
    #[error("control plane: {0}")]
    ControlPlane(#[from] Status),
}

/// Result alias of the sidecar.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::ControlPlane(status) => Status::unavailable(format!("control plane: {}", status.message())),
            Error::Timeout(_) => Status::unavailable(error.to_string()),
            other => {
                tracing::error!(error = %other, "internal error");
                Status::internal("internal error")
            }
        }
    }
}
