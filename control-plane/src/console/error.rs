//! An [`Error`] as an HTML answer: the HTTP status of its one
//! classification ([`Error::code`], shared with the gRPC API), a page that
//! says what went wrong (the fields, for bad input), and internal causes
//! only in the log.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};

use super::nav::Nav;
use super::views::ErrorPage;
use crate::error::{Error, ErrorCode};

/// The answer to a failed console request.
pub fn error_page(error: Error, nav: Option<&Nav>) -> Response {
    let code = error.code();
    if code == ErrorCode::Unauthenticated {
        return Redirect::to("/login").into_response();
    }
    let status = StatusCode::from_u16(code.http()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (message, fields) = match error {
        Error::InvalidArgument(violations) => (
            "Some fields are not right.".to_owned(),
            violations.into_iter().map(|v| (v.field, v.description)).collect(),
        ),
        other if code == ErrorCode::Unavailable => {
            tracing::warn!(error = %other, "console request failed: unavailable");
            ("A dependency is unavailable right now; try again shortly.".to_owned(), Vec::new())
        }
        other => (other.public_message(), Vec::new()),
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
