//! Keyset paging, shared by every listing: a page request (size and the
//! opaque token of the previous page) becomes a [`Cursor`] (where to start,
//! how many rows to fetch), and the fetched rows become a [`Page`]. One extra
//! row is fetched to learn whether another page follows.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::{Error, Result};

/// Page size when the request names none.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest page size.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// What a caller asks for: `size` 0 means the default; `token` is empty for
/// the first page.
#[derive(Clone, Debug, Default)]
pub struct PageRequest {
    /// Rows per page.
    pub size: u32,
    /// `next_page_token` of the previous page.
    pub token: String,
}

/// A listing request: the org, the page, and the listing's own filter.
#[derive(Debug, Default)]
pub struct ListQuery<F> {
    /// Requested org (may be empty for org-scoped callers).
    pub org_id: String,
    pub page: PageRequest,
    /// Filters of this listing.
    pub filter: F,
}

/// One page of a listing.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Token of the next page; empty at the end.
    pub next_page_token: String,
}

impl<T> Page<T> {
    /// Its items as `convert` makes them, and the next page's token.
    pub fn convert<U>(self, convert: impl FnMut(&T) -> U) -> (Vec<U>, String) {
        (self.items.iter().map(convert).collect(), self.next_page_token)
    }
}

/// The page tokens of one listing: tokens carry the listing's name, so a
/// token of another listing is refused.
#[derive(Clone, Copy, Debug)]
pub struct Listing(&'static str);

/// Where a page starts and how many rows to fetch.
#[derive(Debug)]
pub struct Cursor {
    listing: Listing,
    limit: u64,
    /// Keyset position after (or before) which the page starts.
    pub position: Option<String>,
}

impl Listing {
    /// The listing named `name` (in its page tokens).
    pub const fn named(name: &'static str) -> Self {
        Self(name)
    }

    /// Checks the request (fields `page_size`, `page_token`).
    pub fn start(self, request: &PageRequest) -> Result<Cursor> {
        let limit = match request.size {
            0 => u64::from(DEFAULT_PAGE_SIZE),
            1..=MAX_PAGE_SIZE => u64::from(request.size),
            _ => return Err(Error::invalid("page_size", format!("must be between 1 and {MAX_PAGE_SIZE}"))),
        };
        Ok(Cursor { listing: self, limit, position: self.decode(&request.token)? })
    }

    fn encode(self, position: &str) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{position}", self.0))
    }

    fn decode(self, token: &str) -> Result<Option<String>> {
        if token.is_empty() {
            return Ok(None);
        }
        let text = URL_SAFE_NO_PAD.decode(token).ok().and_then(|bytes| String::from_utf8(bytes).ok());
        let position = text.as_deref().and_then(|text| text.strip_prefix(self.0)?.strip_prefix(':'));
        position.map(|p| Some(p.to_owned())).ok_or_else(invalid_token)
    }
}

/// The error for a page token this listing did not issue.
pub fn invalid_token() -> Error {
    Error::invalid("page_token", "is not a page token returned by this listing")
}

impl Cursor {
    /// Rows to fetch: the page and one more.
    pub fn fetch(&self) -> u64 {
        self.limit + 1
    }

    /// The page of `rows` (fetched with [`fetch`](Self::fetch));
    /// `position_of` gives the keyset position of a row.
    pub fn page<T>(&self, mut rows: Vec<T>, position_of: impl Fn(&T) -> String) -> Page<T> {
        let next_page_token = if rows.len() as u64 > self.limit {
            rows.truncate(self.limit as usize);
            rows.last().map(|row| self.listing.encode(&position_of(row))).unwrap_or_default()
        } else {
            String::new()
        };
        Page { items: rows, next_page_token }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(size: u32, token: &str) -> PageRequest {
        PageRequest { size, token: token.to_owned() }
    }

    #[test]
    fn pages_cut_and_chain() {
        let keys = Listing::named("keys");
        let cursor = keys.start(&request(2, "")).unwrap();
        assert_eq!((cursor.fetch(), cursor.position.as_deref()), (3, None));
        let page = cursor.page(vec!["a", "b", "c"], |s| (*s).to_owned());
        assert_eq!(page.items, ["a", "b"]);
        let next = keys.start(&request(2, &page.next_page_token)).unwrap();
        assert_eq!(next.position.as_deref(), Some("b"));
        assert!(next.page(vec!["c"], |s| (*s).to_owned()).next_page_token.is_empty());
        assert_eq!(keys.start(&request(0, "")).unwrap().fetch(), u64::from(DEFAULT_PAGE_SIZE) + 1);
    }

    #[test]
    fn bad_requests_name_the_field() {
        let keys = Listing::named("keys");
        let audit_token = Listing::named("audit").encode("7");
        for (bad, field) in [
            (request(1001, ""), "page_size"),
            (request(1, "!!!"), "page_token"),
            (request(1, &audit_token), "page_token"),
        ] {
            match keys.start(&bad) {
                Err(Error::InvalidArgument(violations)) => assert_eq!(violations[0].field, field),
                other => panic!("{other:?}"),
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn page_tokens_round_trip(position in ".*") {
            let keys = Listing::named("keys");
            let token = keys.encode(&position);
            proptest::prop_assert_eq!(keys.decode(&token).ok().flatten(), Some(position));
        }

        #[test]
        fn decoding_any_text_never_panics(text in ".*") {
            let _ = Listing::named("keys").decode(&text);
        }
    }
}
