//! What nginx says of itself: its worker processes, and the request count of its
//! stub_status page.

/// The worker processes of the nginx master `master`.
pub(in crate::bench) fn nginx_workers(master: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect()
}

/// The `requests` figure of nginx's stub_status page:
/// `Active connections: 1\nserver accepts handled requests\n 5 5 42\n...`.
pub(in crate::bench) fn parse_stub_status(body: &str) -> Option<u64> {
    let mut lines = body.lines();
    lines.find(|line| line.contains("accepts handled requests"))?;
    lines.next()?.split_whitespace().nth(2)?.parse().ok()
}
