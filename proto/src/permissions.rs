//! Permission queries: what a check may require of a key beyond its scopes
//! (`(orders.read OR orders.admin) AND billing.read`), parsed once and
//! evaluated against the permissions a key holds, in the sidecar from its
//! cache and in the control plane alike.
//!
//! Grammar (keywords in capitals, names case-sensitive):
//!
//! ```text
//! query = or
//! or    = and { "OR" and }
//! and   = atom { "AND" atom }
//! atom  = name | "(" or ")"
//! name  = segment { "." segment }      segment = 1*( a-z / A-Z / 0-9 / "_" / "-" / ":" )
//! ```
//!
//! There is no `NOT`: a query is monotone, so granting a key more can never
//! refuse it something it was allowed. A query is at most
//! [`MAX_QUERY_CHARS`] long, nests at most [`MAX_DEPTH`] parentheses and
//! names at most [`MAX_NAMES`] permissions; errors give the byte position.
//!
//! Held permissions may end in `*` at segment granularity: `billing.*`
//! holds `billing.read` and `billing.invoices.read`; `*` holds everything.

use std::collections::BTreeSet;
use std::fmt;

/// Longest query.
pub const MAX_QUERY_CHARS: usize = 1000;
/// Deepest nesting of parentheses.
pub const MAX_DEPTH: usize = 16;
/// Most names in one query.
pub const MAX_NAMES: usize = 64;

/// A parsed query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// One permission.
    Name(String),
    /// Every part holds.
    All(Vec<Query>),
    /// Some part holds.
    Any(Vec<Query>),
}

/// Why a query does not parse: where, and what was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryError {
    /// Byte offset in the query.
    pub position: usize,
    pub message: String,
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at position {}: {}", self.position, self.message)
    }
}

impl std::error::Error for QueryError {}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Name(String),
    And,
    Or,
    Open,
    Close,
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.')
}

fn tokens(text: &str) -> Result<Vec<(usize, Token)>, QueryError> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                out.push((i, Token::Open));
                i += 1;
            }
            b')' => {
                out.push((i, Token::Close));
                i += 1;
            }
            b if is_name_byte(b) => {
                let start = i;
                while i < bytes.len() && is_name_byte(bytes[i]) {
                    i += 1;
                }
                let word = &text[start..i];
                let token = match word {
                    "AND" => Token::And,
                    "OR" => Token::Or,
                    _ if word.split('.').any(str::is_empty) => {
                        return Err(QueryError { position: start, message: format!("{word:?} has an empty segment") });
                    }
                    _ => Token::Name(word.to_owned()),
                };
                out.push((start, token));
            }
            _ => {
                let shown = text[i..].chars().next().unwrap_or(' ');
                return Err(QueryError { position: i, message: format!("unexpected {shown:?}") });
            }
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    next: usize,
    end: usize,
    names: usize,
}

impl Parser {
    fn position(&self) -> usize {
        self.tokens.get(self.next).map_or(self.end, |(at, _)| *at)
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next).map(|(_, token)| token)
    }

    fn error(&self, message: &str) -> QueryError {
        QueryError { position: self.position(), message: message.to_owned() }
    }

    fn or(&mut self, depth: usize) -> Result<Query, QueryError> {
        let mut parts = vec![self.and(depth)?];
        while self.peek() == Some(&Token::Or) {
            self.next += 1;
            parts.push(self.and(depth)?);
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { Query::Any(parts) })
    }

    fn and(&mut self, depth: usize) -> Result<Query, QueryError> {
        let mut parts = vec![self.atom(depth)?];
        while self.peek() == Some(&Token::And) {
            self.next += 1;
            parts.push(self.atom(depth)?);
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { Query::All(parts) })
    }

    fn atom(&mut self, depth: usize) -> Result<Query, QueryError> {
        match self.peek().cloned() {
            Some(Token::Name(name)) => {
                self.names += 1;
                if self.names > MAX_NAMES {
                    return Err(self.error(&format!("names more than {MAX_NAMES} permissions")));
                }
                self.next += 1;
                Ok(Query::Name(name))
            }
            Some(Token::Open) => {
                if depth >= MAX_DEPTH {
                    return Err(self.error(&format!("nests parentheses deeper than {MAX_DEPTH}")));
                }
                self.next += 1;
                let inner = self.or(depth + 1)?;
                if self.peek() != Some(&Token::Close) {
                    return Err(self.error("expected \")\""));
                }
                self.next += 1;
                Ok(inner)
            }
            Some(_) => Err(self.error("expected a permission or \"(\"")),
            None => Err(self.error("ends where a permission or \"(\" was expected")),
        }
    }
}

impl Query {
    /// Parses `text` (see the module's grammar).
    pub fn parse(text: &str) -> Result<Self, QueryError> {
        if text.len() > MAX_QUERY_CHARS {
            return Err(QueryError { position: MAX_QUERY_CHARS, message: format!("is longer than {MAX_QUERY_CHARS}") });
        }
        let mut parser = Parser { tokens: tokens(text)?, next: 0, end: text.len(), names: 0 };
        let query = parser.or(0)?;
        if parser.next < parser.tokens.len() {
            return Err(parser.error("expected AND, OR or the end"));
        }
        Ok(query)
    }

    /// Whether a holder of `held` satisfies the query.
    pub fn allows(&self, held: &(impl Holder + ?Sized)) -> bool {
        match self {
            Query::Name(name) => held.holds(name),
            Query::All(parts) => parts.iter().all(|part| part.allows(held)),
            Query::Any(parts) => parts.iter().any(|part| part.allows(held)),
        }
    }
}

/// Something that holds permissions: a [`Held`] set, or a key's state.
pub trait Holder {
    /// Whether permission `name` is held, exactly or under a wildcard.
    fn holds(&self, name: &str) -> bool;
}

/// Longest permission name (or pattern) a key, role or identity may hold.
pub const MAX_NAME_CHARS: usize = 128;

/// Checks a permission a holder is granted: a name, `prefix.*` or `*`.
/// The error says what is wrong with it.
pub fn check_grant(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() || pattern.len() > MAX_NAME_CHARS {
        return Err(format!("must be 1 to {MAX_NAME_CHARS} characters"));
    }
    let name = pattern.strip_suffix(".*").unwrap_or(pattern);
    if pattern == "*" {
        return Ok(());
    }
    if !name.bytes().all(is_name_byte) {
        return Err("may hold letters, digits, _ - : and . (and end in .* for a wildcard)".to_owned());
    }
    if name.split('.').any(str::is_empty) {
        return Err("has an empty segment".to_owned());
    }
    if matches!(name, "AND" | "OR") {
        return Err("AND and OR are words of the query language".to_owned());
    }
    Ok(())
}

/// Whether a granted `pattern` holds permission `name`: equal, `*`, or a
/// `prefix.*` whose prefix is whole segments of `name`.
pub fn pattern_holds(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        None => pattern == name,
        Some("") => true,
        Some(prefix) => prefix.ends_with('.') && name.len() > prefix.len() && name.starts_with(prefix),
    }
}

/// The permissions a key holds (its own, its roles', its identity's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Held {
    exact: BTreeSet<String>,
    /// `prefix.` of each `prefix.*` held.
    prefixes: Vec<String>,
    everything: bool,
}

impl Held {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(permissions: I) -> Self {
        let mut held = Held::default();
        for permission in permissions {
            let permission: String = permission.into();
            if permission == "*" {
                held.everything = true;
            } else if let Some(prefix) = permission.strip_suffix('*').filter(|prefix| prefix.ends_with('.')) {
                held.prefixes.push(prefix.to_owned());
            } else {
                held.exact.insert(permission);
            }
        }
        held
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty() && !self.everything
    }
}

impl Holder for Held {
    /// Whether `name` is held: exactly, or under a held `prefix.*` or `*`.
    fn holds(&self, name: &str) -> bool {
        self.everything
            || self.exact.contains(name)
            || self.prefixes.iter().any(|prefix| name.len() > prefix.len() && name.starts_with(prefix.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn allows(query: &str, held: &[&str]) -> bool {
        Query::parse(query).unwrap().allows(&Held::new(held.iter().copied()))
    }

    #[test]
    fn queries_combine_names_with_and_or_and_parentheses() {
        let query = "(orders.read OR orders.admin) AND billing.read";
        assert!(allows(query, &["orders.read", "billing.read"]));
        assert!(allows(query, &["orders.admin", "billing.read"]));
        assert!(!allows(query, &["orders.read"]));
        assert!(!allows(query, &["billing.read", "orders.write"]));
        assert!(allows("a OR b AND c", &["a"]), "AND binds tighter than OR");
        assert!(!allows("(a OR b) AND c", &["a"]));
    }

    #[test]
    fn wildcards_hold_whole_segments() {
        assert!(allows("billing.invoices.read", &["billing.*"]));
        assert!(allows("billing.read", &["billing.*"]));
        assert!(!allows("billing", &["billing.*"]));
        assert!(!allows("billingx.read", &["billing.*"]));
        assert!(allows("anything.at.all", &["*"]));
    }

    #[test]
    fn grants_are_names_or_segment_wildcards() {
        for good in ["orders.read", "billing.*", "*", "orders:read", "a-b_c.d"] {
            assert_eq!(check_grant(good), Ok(()), "{good}");
        }
        for bad in ["", "billing*", "billing.", ".x", "a..b", "a b", "or(", "AND", &"a".repeat(MAX_NAME_CHARS + 1)] {
            assert!(check_grant(bad).is_err(), "{bad:?}");
        }
        assert!(pattern_holds("billing.*", "billing.read"));
        assert!(!pattern_holds("billing.*", "billing"));
        assert!(!pattern_holds("billing.*", "billingx.read"));
        assert!(pattern_holds("*", "x"));
        assert!(pattern_holds("a.b", "a.b") && !pattern_holds("a.b", "a.bc"));
    }

    #[test]
    fn errors_say_where() {
        for (query, position) in [
            ("a AND", 5),
            ("a OR OR b", 5),
            ("(a OR b", 7),
            ("a b", 2),
            ("a & b", 2),
            ("a..b", 0),
            ("", 0),
            ("NOT a", 4),
        ] {
            let error = Query::parse(query).unwrap_err();
            assert_eq!(error.position, position, "{query:?}: {error}");
        }
        let deep = format!("{}a{}", "(".repeat(MAX_DEPTH + 1), ")".repeat(MAX_DEPTH + 1));
        assert!(Query::parse(&deep).unwrap_err().message.contains("deeper"));
        let many = vec!["a"; MAX_NAMES + 1].join(" OR ");
        assert!(Query::parse(&many).unwrap_err().message.contains("more than"));
        assert!(Query::parse(&"a".repeat(MAX_QUERY_CHARS + 1)).is_err());
    }

    fn name() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "c", "a.x", "a.y", "b.x"]).prop_map(str::to_owned)
    }

    fn query() -> impl Strategy<Value = String> {
        name().prop_recursive(4, 24, 3, |inner| {
            (inner.clone(), prop::sample::select(vec!["AND", "OR"]), inner)
                .prop_map(|(a, op, b)| format!("({a} {op} {b})"))
        })
    }

    fn held() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(
            prop::sample::select(vec!["a", "b", "c", "a.x", "a.y", "b.x", "a.*", "*"]).prop_map(str::to_owned),
            0..5,
        )
    }

    proptest! {
        #[test]
        fn any_text_parses_or_fails_without_panicking(text in "\\PC{0,80}") {
            let _ = Query::parse(&text);
        }

        #[test]
        fn and_and_or_commute(a in query(), b in query(), held in held()) {
            let held = Held::new(held);
            for op in ["AND", "OR"] {
                let left = Query::parse(&format!("{a} {op} {b}")).unwrap().allows(&held);
                let right = Query::parse(&format!("{b} {op} {a}")).unwrap().allows(&held);
                prop_assert_eq!(left, right);
            }
        }

        #[test]
        fn holding_everything_passes_and_more_never_refuses(q in query(), held in held(), extra in name()) {
            let q = Query::parse(&q).unwrap();
            prop_assert!(q.allows(&Held::new(["*"])));
            let mut more = held.clone();
            more.push(extra);
            if q.allows(&Held::new(held)) {
                prop_assert!(q.allows(&Held::new(more)));
            }
        }
    }
}
