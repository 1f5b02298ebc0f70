//! Route texts by hash, learnt from the kernel's announcements, and the per-service budget.

use std::collections::{HashMap, HashSet};

use monitor_common::http::{OVERFLOW_ROUTE, OVERFLOW_ROUTE_HASH, route_kind, template_route};

use crate::collect::http::RouteAnnouncement;

/// The text of each route hash. A hash is the hash of its text, so one entry serves every
/// process that uses the route.
pub struct RouteRegistry {
    texts: HashMap<u64, String>,
    /// Announcements whose path did not give the announced hash.
    pub mismatches: u64,
}

impl Default for RouteRegistry {
    fn default() -> Self {
        Self {
            texts: HashMap::from([(OVERFLOW_ROUTE_HASH, OVERFLOW_ROUTE.to_owned())]),
            mismatches: 0,
        }
    }
}

impl RouteRegistry {
    pub fn learn(&mut self, announcement: &RouteAnnouncement) {
        let template = template_route(&announcement.path);
        let (hash, text) = match announcement.kind {
            route_kind::COLLAPSED => (template.collapsed_hash, template.collapsed_text),
            _ => (template.hash, template.text),
        };
        if hash == announcement.route {
            self.texts.insert(hash, text);
        } else {
            self.mismatches += 1;
            log::debug!(
                "route announcement for process {} does not match its path",
                announcement.tgid
            );
        }
    }

    pub fn text(&self, route: u64) -> Option<&str> {
        self.texts.get(&route).map(String::as_str)
    }
}

/// Distinct routes per service, at most `limit`; the rest are `__overflow__`.
pub struct ServiceRouteBudget {
    limit: usize,
    admitted: HashMap<String, HashSet<String>>,
}

impl ServiceRouteBudget {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            admitted: HashMap::new(),
        }
    }

    /// The route label to use for `route` of `service`.
    pub fn admit<'a>(&mut self, service: &str, route: &'a str) -> &'a str {
        let routes = self.admitted.entry(service.to_owned()).or_default();
        if routes.contains(route) {
            return route;
        }
        if route == OVERFLOW_ROUTE || routes.len() >= self.limit {
            return OVERFLOW_ROUTE;
        }
        routes.insert(route.to_owned());
        route
    }

    /// Forgets services that no longer have series.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.admitted.retain(|service, _| keep(service));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announcement(path: &str, kind: u8) -> RouteAnnouncement {
        let template = template_route(path.as_bytes());
        RouteAnnouncement {
            tgid: 1,
            route: if kind == route_kind::COLLAPSED {
                template.collapsed_hash
            } else {
                template.hash
            },
            kind,
            path: path.as_bytes().to_vec(),
        }
    }

    #[test]
    fn announced_routes_get_their_template_text() {
        let mut registry = RouteRegistry::default();
        let a = announcement("/users/42?token=secret", route_kind::TEMPLATE);
        registry.learn(&a);
        assert_eq!(registry.text(a.route), Some("/users/{id}"));
        let c = announcement("/docs/intro", route_kind::COLLAPSED);
        registry.learn(&c);
        assert_eq!(registry.text(c.route), Some("/docs/{*}"));
        assert_eq!(registry.text(OVERFLOW_ROUTE_HASH), Some(OVERFLOW_ROUTE));
    }

    #[test]
    fn a_path_that_does_not_give_the_hash_is_not_learnt() {
        let mut registry = RouteRegistry::default();
        let mut a = announcement("/users/42", route_kind::TEMPLATE);
        a.path = b"/other".to_vec();
        registry.learn(&a);
        assert_eq!(registry.text(a.route), None);
        assert_eq!(registry.mismatches, 1);
    }

    #[test]
    fn budget_admits_up_to_the_limit_per_service() {
        let mut budget = ServiceRouteBudget::new(2);
        assert_eq!(budget.admit("a", "/x"), "/x");
        assert_eq!(budget.admit("a", "/y"), "/y");
        assert_eq!(budget.admit("a", "/z"), OVERFLOW_ROUTE);
        assert_eq!(budget.admit("a", "/x"), "/x");
        assert_eq!(budget.admit("b", "/z"), "/z");
    }
}
