//! The console's pages, one file per section. Each handler reads its
//! input, calls the service layer with the session's request context and
//! renders a template; any [`Error`] becomes the error page.

pub mod audit;
pub mod catalog;
pub mod connections;
pub mod deliveries;
pub mod endpoint;
pub mod keys;
pub mod overview;
pub mod roles;
pub mod shown;
pub mod signin;
pub mod users;
pub mod webhooks;

use askama::Template;
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::{DateTime, TimeDelta, Utc};

use super::chart::{self, Chart, Series};
use super::error::error_page;
use super::nav::Nav;
use super::views::ChartView;
use crate::error::{Error, Result};
use crate::service::paging::PageRequest;
use crate::service::records::Granularity;
use crate::service::usage::{RangeRequest, UsageSeries};

/// Rows per console page.
const PAGE_SIZE: u32 = 50;

/// The page, or the error page.
pub fn respond(nav: &Nav, result: Result<Response>) -> Response {
    result.unwrap_or_else(|error| error_page(error, Some(nav)))
}

/// A rendered template.
pub fn render(template: &impl Template) -> Result<Response> {
    Ok(Html(template.render()?).into_response())
}

/// A form shown again with its errors.
pub fn bad_request(mut page: Response) -> Response {
    *page.status_mut() = axum::http::StatusCode::BAD_REQUEST;
    page
}

/// After a change: back to `to` (303, so a reload does not post again).
pub fn see_other(to: &str) -> Result<Response> {
    Ok(Redirect::to(to).into_response())
}

pub async fn not_found() -> Response {
    error_page(Error::NotFound("page"), None)
}

/// The page of a listing named by a `page` query value.
pub fn page_request(token: &str) -> PageRequest {
    PageRequest { size: PAGE_SIZE, token: token.to_owned() }
}

/// The query string of the next page: the filters and its token.
pub fn next_page(filters: &[(&str, &str)], token: &str) -> Option<String> {
    if token.is_empty() {
        return None;
    }
    let mut pairs: Vec<(&str, &str)> = filters.iter().copied().filter(|(_, value)| !value.is_empty()).collect();
    pairs.push(("page", token));
    serde_urlencoded::to_string(pairs).ok()
}

/// A usage window ending now: the last hour by minute, the last day by
/// hour, or the last 30 days by day.
pub fn window(granularity: Granularity) -> RangeRequest {
    let now = Utc::now();
    let back = match granularity {
        Granularity::Minute => TimeDelta::hours(1),
        Granularity::Hour => TimeDelta::hours(24),
        Granularity::Day => TimeDelta::days(30),
    };
    RangeRequest { start: Some(now - back), end: Some(now), granularity: Some(granularity) }
}

/// How a bucket start is labelled at `granularity`.
pub fn bucket_label(at: DateTime<Utc>, granularity: Granularity) -> String {
    match granularity {
        Granularity::Minute => at.format("%H:%M").to_string(),
        Granularity::Hour => at.format("%d %H:00").to_string(),
        Granularity::Day => at.format("%b %d").to_string(),
    }
}

/// The verifications chart of a usage series, by outcome.
pub fn usage_chart(title: &str, series: &UsageSeries, granularity: Granularity) -> ChartView {
    let labels: Vec<String> = series.buckets.iter().map(|(at, _)| bucket_label(*at, granularity)).collect();
    let pick = |f: fn(&crate::service::records::Counts) -> i64| -> Vec<f64> {
        series.buckets.iter().map(|(_, counts)| f(counts) as f64).collect()
    };
    let lines = vec![
        Series { name: "allowed", color: "blue", values: pick(|c| c.allowed) },
        Series { name: "401", color: "red", values: pick(|c| c.unauthorized) },
        Series { name: "403", color: "amber", values: pick(|c| c.forbidden) },
        Series { name: "429", color: "violet", values: pick(|c| c.rate_limited) },
    ];
    let svg = chart::line_chart(&Chart { title, unit: "checks", labels: labels.clone(), series: lines });
    let rows = series
        .buckets
        .iter()
        .zip(labels)
        .map(|((_, c), label)| {
            let values = [c.allowed, c.unauthorized, c.forbidden, c.rate_limited, c.total()];
            (label, values.iter().map(|v| chart::format_number(*v as f64)).collect())
        })
        .collect();
    ChartView {
        svg,
        caption: title.to_owned(),
        columns: ["time", "allowed", "unauthorized", "forbidden", "rate limited", "total"].map(str::to_owned).to_vec(),
        rows,
    }
}

/// A granularity named in a query (`minute`, `hour`, `day`).
pub fn granularity(name: &str) -> Granularity {
    match name {
        "minute" => Granularity::Minute,
        "day" => Granularity::Day,
        _ => Granularity::Hour,
    }
}
