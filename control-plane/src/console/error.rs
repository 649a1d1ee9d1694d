//! The console's one mapping from [`Error`] to an HTML answer, as
//! `error.rs` is the gRPC API's: the same status families, a page that
//! says what went wrong (the fields, for bad input), and internal causes
//! only in the log.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};

use super::session::Nav;
use super::views::ErrorPage;
use crate::error::Error;

/// The answer to a failed console request.
pub fn error_page(error: Error, nav: Option<&Nav>) -> Response {
    let status = match &error {
        Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        Error::Unauthenticated(_) => return Redirect::to("/login").into_response(),
        Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::LimitReached(_) | Error::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
        Error::FailedPrecondition(_) | Error::ProviderRejected(_) => StatusCode::CONFLICT,
        Error::Unavailable(_) | Error::ProviderUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Database(db) if crate::error::is_unique_violation(db) => StatusCode::CONFLICT,
        Error::Database(db) if crate::error::is_unavailable(db) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let (message, fields) = match error {
        Error::InvalidArgument(violations) => (
            "Some fields are not right.".to_owned(),
            violations.into_iter().map(|v| (v.field, v.description)).collect(),
        ),
        other if status == StatusCode::INTERNAL_SERVER_ERROR => {
            tracing::error!(error = %other, "console request failed");
            ("Something went wrong on our side; the server log has the details.".to_owned(), Vec::new())
        }
        other if status == StatusCode::SERVICE_UNAVAILABLE => {
            tracing::warn!(error = %other, "console request failed: unavailable");
            ("A dependency is unavailable right now; try again shortly.".to_owned(), Vec::new())
        }
        other => (other.to_string(), Vec::new()),
    };
    let page = ErrorPage { nav: nav.cloned(), status: status.as_u16(), message, fields };
    match askama::Template::render(&page) {
        Ok(html) => (status, Html(html)).into_response(),
        Err(error) => {
            tracing::error!(%error, "rendering the error page failed");
            status.into_response()
        }
    }
}
