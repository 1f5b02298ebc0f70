//! Route texts by hash, learnt from the kernel's announcements, and the per-service budget.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use monitor_common::http::{
    FNV_OFFSET, MAX_PATH_LEN, OVERFLOW_ROUTE, OVERFLOW_ROUTE_HASH, Template, event_kind, fnv_bytes,
    template_allowance, template_cut_route, template_route,
};

use crate::collect::http::RouteAnnouncement;

/// The text of each route hash. A hash is the hash of its text, so one entry serves every
/// process that uses the route. Texts nobody asked for in `FORGET_UNUSED_AFTER` are forgotten:
/// processes come and go, each with routes and server addresses of its own, and the agent
/// must not grow with every one it has ever seen. A live process's counts ask for their text
/// at every refresh; one forgotten too early is announced again (`REANNOUNCE_AFTER`).
#[derive(Default)]
pub struct RouteRegistry {
    texts: HashMap<u64, KnownText>,
    /// Announcements whose path did not give the announced hash.
    pub mismatches: u64,
}

struct KnownText {
    text: String,
    used: Instant,
}

/// How long a text nobody asked for is kept.
pub const FORGET_UNUSED_AFTER: Duration = Duration::from_secs(600);

/// Texts kept at most: more than the kernel's tables of admitted routes and server addresses
/// hold at once (`ROUTES_SEEN`, `HOSTS_SEEN`).
const MAX_TEXTS: usize = 100_000;

impl RouteRegistry {
    pub fn learn(&mut self, announcement: &RouteAnnouncement, now: Instant) {
        let route = |template: Template| match announcement.kind {
            event_kind::COLLAPSED => (template.collapsed_hash, template.collapsed_text),
            _ => (template.hash, template.text),
        };
        let (hash, text) = match announcement.kind {
            event_kind::HOST => (
                fnv_bytes(FNV_OFFSET, &announcement.path),
                String::from_utf8_lossy(&announcement.path).into_owned(),
            ),
            _ => {
                let whole = route(template_route(&announcement.path));
                // A path of the most bytes announced may have gone on: the kernel then
                // templated it as cut.
                if whole.0 != announcement.route && announcement.path.len() >= MAX_PATH_LEN {
                    route(template_cut_route(&announcement.path))
                } else {
                    whole
                }
            }
        };
        if hash == announcement.route {
            self.texts.insert(hash, KnownText { text, used: now });
        } else {
            self.mismatches += 1;
            log::debug!(
                "route announcement for process {} does not match its path",
                announcement.tgid
            );
        }
    }

    /// The text of `route`, which counts as used at `now`.
    pub fn text(&mut self, route: u64, now: Instant) -> Option<&str> {
        if route == OVERFLOW_ROUTE_HASH {
            return Some(OVERFLOW_ROUTE);
        }
        let known = self.texts.get_mut(&route)?;
        known.used = now;
        Some(&known.text)
    }

    /// Forgets the texts not learnt or asked for in the last `FORGET_UNUSED_AFTER`, and past
    /// `MAX_TEXTS` the least recently used (budgets are per process in the kernel, and
    /// processes that each announce routes of their own can come and go faster than that).
    pub fn forget_unused(&mut self, now: Instant) {
        self.texts
            .retain(|_, known| now.saturating_duration_since(known.used) <= FORGET_UNUSED_AFTER);
        if self.texts.len() > MAX_TEXTS {
            // Down to three quarters: a rare pass, not one per refresh.
            super::keep_latest(&mut self.texts, MAX_TEXTS * 3 / 4, |known| known.used);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.texts.len()
    }
}

/// Distinct routes per service: templates up to `template_allowance(limit)`, then the
/// collapsed form `/<first segment>/{*}` of further templates until `limit` routes, then
/// `__overflow__`: the rule the kernel applies per process, applied again per service
/// (whose processes may each have admitted different routes).
pub struct ServiceRouteBudget {
    limit: usize,
    admitted: HashMap<String, ServiceRoutes>,
}

#[derive(Default)]
struct ServiceRoutes {
    routes: HashSet<String>,
    templates: usize,
}

/// How a route label was decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// The route as it came.
    AsIs(String),
    /// The service's templates were spent: collapsed to `/<first segment>/{*}`.
    Collapsed(String),
    /// No room at all.
    Overflow,
}

impl Admitted {
    pub fn label(&self) -> &str {
        match self {
            Admitted::AsIs(route) | Admitted::Collapsed(route) => route,
            Admitted::Overflow => OVERFLOW_ROUTE,
        }
    }
}

fn is_collapsed(route: &str) -> bool {
    route.ends_with("/{*}")
}

/// `/docs/intro` -> `/docs/{*}`, `/` -> `/{*}`.
fn collapse(route: &str) -> String {
    let first = route
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("");
    if first.is_empty() {
        "/{*}".to_owned()
    } else {
        format!("/{first}/{{*}}")
    }
}

impl ServiceRouteBudget {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            admitted: HashMap::new(),
        }
    }

    /// The route label to use for `route` of `service`.
    pub fn admit(&mut self, service: &str, route: &str) -> Admitted {
        let limit = self.limit;
        let templates_allowed = template_allowance(limit as u32) as usize;
        let service = self.admitted.entry(service.to_owned()).or_default();
        if route == OVERFLOW_ROUTE {
            return Admitted::Overflow;
        }
        if service.routes.contains(route) {
            return Admitted::AsIs(route.to_owned());
        }
        let already_collapsed = is_collapsed(route);
        if !already_collapsed
            && service.templates < templates_allowed
            && service.routes.len() < limit
        {
            service.templates += 1;
            service.routes.insert(route.to_owned());
            return Admitted::AsIs(route.to_owned());
        }
        let collapsed = if already_collapsed {
            route.to_owned()
        } else {
            collapse(route)
        };
        if service.routes.contains(&collapsed) || service.routes.len() < limit {
            service.routes.insert(collapsed.clone());
            return if already_collapsed {
                Admitted::AsIs(collapsed)
            } else {
                Admitted::Collapsed(collapsed)
            };
        }
        Admitted::Overflow
    }

    /// Forgets services that no longer have series.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.admitted.retain(|service, _| keep(service));
    }
}

/// Distinct server addresses per service, at most `limit`, then `__overflow__`.
pub struct HostBudget {
    limit: usize,
    admitted: HashMap<String, HashSet<String>>,
}

impl HostBudget {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            admitted: HashMap::new(),
        }
    }

    pub fn admit(&mut self, service: &str, host: &str) -> String {
        let hosts = self.admitted.entry(service.to_owned()).or_default();
        if hosts.contains(host) || (host != OVERFLOW_ROUTE && hosts.len() < self.limit) {
            hosts.insert(host.to_owned());
            return host.to_owned();
        }
        OVERFLOW_ROUTE.to_owned()
    }

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
            route: if kind == event_kind::COLLAPSED {
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
        let a = announcement("/users/42?token=secret", event_kind::TEMPLATE);
        registry.learn(&a, Instant::now());
        assert_eq!(registry.text(a.route, Instant::now()), Some("/users/{id}"));
        let c = announcement("/docs/intro", event_kind::COLLAPSED);
        registry.learn(&c, Instant::now());
        assert_eq!(registry.text(c.route, Instant::now()), Some("/docs/{*}"));
        assert_eq!(
            registry.text(OVERFLOW_ROUTE_HASH, Instant::now()),
            Some(OVERFLOW_ROUTE)
        );
    }

    #[test]
    fn a_path_that_does_not_give_the_hash_is_not_learnt() {
        let mut registry = RouteRegistry::default();
        let mut a = announcement("/users/42", event_kind::TEMPLATE);
        a.path = b"/other".to_vec();
        registry.learn(&a, Instant::now());
        assert_eq!(registry.text(a.route, Instant::now()), None);
        assert_eq!(registry.mismatches, 1);
    }

    #[test]
    fn a_path_longer_than_announced_is_learnt_as_the_kernel_cut_it() {
        // The kernel templates the whole path but announces its first MAX_PATH_LEN bytes.
        let full = format!("/long/{}", "segment/".repeat(40));
        let kernel = template_route(full.as_bytes());
        assert!(kernel.text.ends_with("/{*}"), "{}", kernel.text);
        let announced = full.as_bytes()[..MAX_PATH_LEN].to_vec();
        for (kind, route, text) in [
            (event_kind::TEMPLATE, kernel.hash, &kernel.text),
            (
                event_kind::COLLAPSED,
                kernel.collapsed_hash,
                &kernel.collapsed_text,
            ),
        ] {
            let mut registry = RouteRegistry::default();
            registry.learn(
                &RouteAnnouncement {
                    tgid: 1,
                    route,
                    kind,
                    path: announced.clone(),
                },
                Instant::now(),
            );
            assert_eq!(registry.text(route, Instant::now()), Some(text.as_str()));
            assert_eq!(registry.mismatches, 0);
        }
        // A path of exactly that length, which ended there, is learnt whole.
        let exact = format!("/a/{}", "b".repeat(MAX_PATH_LEN - 3));
        let mut registry = RouteRegistry::default();
        let a = announcement(&exact, event_kind::TEMPLATE);
        registry.learn(&a, Instant::now());
        assert_eq!(registry.text(a.route, Instant::now()), Some("/a/{id}"));
    }

    #[test]
    fn texts_nobody_asks_for_are_forgotten_and_those_in_use_kept() {
        let mut registry = RouteRegistry::default();
        let start = Instant::now();
        let used = announcement("/orders/7", event_kind::TEMPLATE);
        let idle = announcement("/reports/9", event_kind::TEMPLATE);
        registry.learn(&used, start);
        registry.learn(&idle, start);
        // A live process's counts ask for their route's text at every refresh.
        let mut now = start;
        while now < start + FORGET_UNUSED_AFTER * 2 {
            now += Duration::from_secs(1);
            assert_eq!(registry.text(used.route, now), Some("/orders/{id}"));
            registry.forget_unused(now);
        }
        assert_eq!(registry.text(idle.route, now), None);
        assert_eq!(registry.len(), 1);
        // Kept for the whole period, and `__overflow__` is never forgotten.
        let mut registry = RouteRegistry::default();
        registry.learn(&idle, start);
        registry.forget_unused(start + FORGET_UNUSED_AFTER);
        assert_eq!(registry.len(), 1);
        registry.forget_unused(start + FORGET_UNUSED_AFTER + Duration::from_secs(1));
        assert_eq!(registry.len(), 0);
        assert_eq!(
            registry.text(OVERFLOW_ROUTE_HASH, now),
            Some(OVERFLOW_ROUTE)
        );
    }

    #[test]
    fn texts_are_bounded_the_least_recently_used_forgotten_first() {
        let mut registry = RouteRegistry::default();
        let start = Instant::now();
        let total = MAX_TEXTS + 10;
        for n in 0..total {
            let used = start + Duration::from_millis(n as u64);
            let text = KnownText {
                text: format!("/r{n}"),
                used,
            };
            registry.texts.insert(n as u64 + 1, text);
        }
        registry.forget_unused(start + Duration::from_secs(1));
        assert_eq!(registry.len(), MAX_TEXTS * 3 / 4);
        assert_eq!(registry.text(1, start), None, "the oldest went");
        let newest = registry.text(total as u64, start).map(str::to_owned);
        assert_eq!(newest.as_deref(), Some(format!("/r{}", total - 1).as_str()));
    }

    fn admit(budget: &mut ServiceRouteBudget, service: &str, route: &str) -> String {
        budget.admit(service, route).label().to_owned()
    }

    #[test]
    fn templates_then_collapsed_forms_then_overflow() {
        // A budget of 4: 3 templates, then collapsed forms up to 4 routes in all.
        let mut budget = ServiceRouteBudget::new(4);
        for route in ["/a/1", "/b/1", "/c/1"] {
            assert_eq!(admit(&mut budget, "s", route), route);
        }
        assert_eq!(
            budget.admit("s", "/d/x"),
            Admitted::Collapsed("/d/{*}".into())
        );
        assert_eq!(admit(&mut budget, "s", "/d/y"), "/d/{*}");
        assert_eq!(admit(&mut budget, "s", "/e/x"), OVERFLOW_ROUTE);
        assert_eq!(admit(&mut budget, "s", "/a/1"), "/a/1");
        // Another service has its own budget.
        assert_eq!(admit(&mut budget, "t", "/e/x"), "/e/x");
    }

    #[test]
    fn routes_the_kernel_collapsed_take_the_remaining_room() {
        let mut budget = ServiceRouteBudget::new(2);
        assert_eq!(admit(&mut budget, "s", "/docs/{*}"), "/docs/{*}");
        assert_eq!(admit(&mut budget, "s", "/a"), "/a");
        assert_eq!(admit(&mut budget, "s", "/b/c"), OVERFLOW_ROUTE);
        assert_eq!(admit(&mut budget, "s", "/"), OVERFLOW_ROUTE);
        assert_eq!(collapse("/"), "/{*}");
    }
}
