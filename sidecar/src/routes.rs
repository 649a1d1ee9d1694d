//! Permission queries forward-auth routes require (`--route-permissions
//! NAME=QUERY`): a proxy checks route NAME by asking `/check/NAME` (or
//! `/check/NAME/…`), a path its own configuration names, so a client cannot
//! choose it. ext_authz routes name theirs in the `permissions` context
//! extension instead.

use std::collections::HashMap;

use keyplane_proto::permissions::Query;

/// One `--route-permissions` flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutePermissions {
    pub route: String,
    pub query: Query,
}

/// Parses `NAME=QUERY`; the error names what is wrong (clap prints it
/// with the flag).
pub fn parse(text: &str) -> Result<RoutePermissions, String> {
    let (route, query) =
        text.split_once('=').ok_or("expected NAME=QUERY, e.g. orders='orders.read OR orders.admin'")?;
    let route = route.trim();
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"_-.".contains(&b);
    if route.is_empty() || !route.bytes().all(allowed) {
        return Err(format!("route {route:?}: one path segment of letters, digits, _ - ."));
    }
    let query = Query::parse(query).map_err(|e| format!("route {route:?}: query {e}"))?;
    Ok(RoutePermissions { route: route.to_owned(), query })
}

/// The configured routes, by name.
#[derive(Clone, Debug, Default)]
pub struct Routes(HashMap<String, Query>);

impl Routes {
    /// The routes of the flags; a name given twice keeps its last query.
    pub fn new(flags: &[RoutePermissions]) -> Self {
        Self(flags.iter().map(|flag| (flag.route.clone(), flag.query.clone())).collect())
    }

    /// The query of the route a forward-auth path names, given the path
    /// after `/check`: its first segment (`/NAME` or `/NAME/…`). `None` for
    /// `/check` itself and for names not configured.
    pub fn for_path(&self, after_check: &str) -> Option<&Query> {
        let rest = after_check.strip_prefix('/')?;
        let name = rest.split('/').next().unwrap_or_default();
        self.0.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_named_by_the_first_segment_after_check() {
        let routes = Routes::new(&[parse("orders=orders.read OR orders.admin").unwrap()]);
        let orders = Query::parse("orders.read OR orders.admin").unwrap();
        assert_eq!(routes.for_path("/orders"), Some(&orders));
        assert_eq!(routes.for_path("/orders/42/items"), Some(&orders));
        assert_eq!(routes.for_path("/ordersx"), None);
        assert_eq!(routes.for_path(""), None);
        for bad in ["orders", "=a", "a b=x", "orders=a AND", "orders=(a"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse("orders=a AND").unwrap_err().contains("query at position 5"));
    }
}
