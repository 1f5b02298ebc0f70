//! Number formats of the report: microseconds, percentages, changes and ranges against no
//! agent, and the kernel's drops; `–` for what was not measured.

use std::collections::BTreeMap;

use super::paired::Paired;

/// `0 dropped`, or the drops by reason: `12 dropped (cpu_time_full 12)`.
pub(super) fn drops_text(drops: &BTreeMap<String, f64>) -> String {
    if drops.is_empty() {
        return "0 dropped".to_owned();
    }
    let total: f64 = drops.values().sum();
    let reasons: Vec<String> = drops
        .iter()
        .map(|(reason, n)| format!("{reason} {n:.0}"))
        .collect();
    format!("{total:.0} dropped ({})", reasons.join(", "))
}

pub(super) fn us(seconds: f64) -> String {
    if seconds.is_finite() {
        format!("{:.1}", seconds * 1e6)
    } else {
        "–".to_owned()
    }
}

pub(super) fn percent(value: f64) -> String {
    if value.is_finite() {
        // `+ 0.0`: an empty f64 sum is -0.0, which would print as `-0.0 %`.
        format!("{:.1} %", value * 100.0 + 0.0)
    } else {
        "–".to_owned()
    }
}

pub(super) fn number(value: f64, decimals: usize) -> String {
    if value.is_finite() {
        format!("{value:.decimals$}")
    } else {
        "–".to_owned()
    }
}

/// The relative change from no agent: `+3.2 %`.
fn change(value: f64) -> String {
    if value.is_finite() {
        format!("{:+.1} %", (value - 1.0) * 100.0)
    } else {
        "–".to_owned()
    }
}

/// `97.0-101.2 %`: the lowest and highest round.
pub(super) fn range(paired: &Paired) -> String {
    if paired.min.is_finite() {
        format!("{:.1}-{:.1} %", paired.min * 100.0, paired.max * 100.0)
    } else {
        "–".to_owned()
    }
}

/// `98.2 % (97.0-101.2 %)`.
pub(super) fn paired_text(paired: &Paired) -> String {
    format!("{} ({})", percent(paired.median), range(paired))
}

/// `+3.2 % (-1.0 to +8.4 %)`.
pub(super) fn change_text(paired: &Paired) -> String {
    if !paired.median.is_finite() {
        return "–".to_owned();
    }
    format!(
        "{} ({:+.1} to {:+.1} %)",
        change(paired.median),
        (paired.min - 1.0) * 100.0,
        (paired.max - 1.0) * 100.0
    )
}
