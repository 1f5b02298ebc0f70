//! The agent's per-service budgets for route and server-address labels, fed label texts
//! from announcements (any bytes).
//!
//! Input: a budget byte, then lines: a service byte and a route or address text.
//! Checks: a service never shows more distinct labels than its budget (plus
//! `__overflow__`); a route keeps its label; kept routes are as they came, collapsed ones
//! `/<first segment>/{*}`.
#![no_main]

use std::collections::{HashMap, HashSet};

use libfuzzer_sys::fuzz_target;
use monitor::model::routes::{Admitted, HostBudget, ServiceRouteBudget};
use monitor_common::http::OVERFLOW_ROUTE;

fuzz_target!(|data: &[u8]| {
    let Some((&budget, lines)) = data.split_first() else {
        return;
    };
    let limit = usize::from(budget % 16);
    let mut routes = ServiceRouteBudget::new(limit);
    let mut hosts = HostBudget::new(limit);
    let mut route_labels: HashMap<(u8, String), String> = HashMap::new();
    let mut host_labels: HashMap<(u8, String), String> = HashMap::new();
    let mut shown: HashMap<(bool, u8), HashSet<String>> = HashMap::new();
    for line in lines.split(|&b| b == b'\n') {
        let Some((&service, text)) = line.split_first() else {
            continue;
        };
        let service = service % 4;
        let text = String::from_utf8_lossy(text).into_owned();
        let name = format!("service-{service}");

        let admitted = routes.admit(&name, &text);
        match &admitted {
            Admitted::AsIs(label) => assert_eq!(label, &text),
            Admitted::Collapsed(label) => {
                assert!(
                    label.starts_with('/') && label.ends_with("/{*}"),
                    "{label:?}"
                );
                let first = text.trim_start_matches('/').split('/').next().unwrap_or("");
                assert!(label[1..].starts_with(first), "{label:?} from {text:?}");
            }
            Admitted::Overflow => {}
        }
        let label = admitted.label().to_owned();
        let before = route_labels.insert((service, text.clone()), label.clone());
        assert!(
            before.is_none_or(|before| before == label),
            "{text:?} changed label"
        );
        shown.entry((true, service)).or_default().insert(label);

        let label = hosts.admit(&name, &text);
        assert!(label == text || label == OVERFLOW_ROUTE);
        let before = host_labels.insert((service, text), label.clone());
        assert!(
            before.is_none_or(|before| before == label),
            "a host changed label"
        );
        shown.entry((false, service)).or_default().insert(label);
    }
    for labels in shown.values() {
        let kept = labels.iter().filter(|l| *l != OVERFLOW_ROUTE).count();
        assert!(
            kept <= limit,
            "{kept} labels over a budget of {limit}: {labels:?}"
        );
    }
});
