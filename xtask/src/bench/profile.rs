//! What dominates the agent's cost per request: `perf record` (cpu-clock samples, which work
//! in VMs without hardware counters) of nginx's worker and the load generator during a run
//! with the agent, summed by symbol: the BPF programs (their bpf_loop callbacks are symbols of
//! their own), the kernel functions they call (helpers, map operations, user-memory reads),
//! and the tracepoint dispatch that runs them.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::output;

/// Whether `perf` can sample here.
pub fn available() -> bool {
    output(Command::new("perf").args(["stat", "-e", "cpu-clock", "true"])).is_some()
}

/// Starts sampling `pids` for `duration` into `data`.
pub fn record(pids: &[u32], duration: Duration, data: &Path) -> Result<Child> {
    if let Some(dir) = data.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    Command::new("perf")
        .args([
            "record",
            "-q",
            "-e",
            "cpu-clock",
            "-F",
            "4999",
            "-p",
            &pids.join(","),
        ])
        .arg("-o")
        .arg(data)
        .args(["--", "sleep", &format!("{:.1}", duration.as_secs_f64())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting perf record")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Category {
    /// A BPF program or one of its callbacks.
    Program,
    /// A kernel function BPF programs call: helpers, maps, user-memory reads.
    Helper,
    /// The tracepoint's call into BPF (and the run-time bookkeeping around each run).
    Dispatch,
    Other,
}

impl Category {
    pub fn name(self) -> &'static str {
        match self {
            Category::Program => "BPF program",
            Category::Helper => "called by BPF",
            Category::Dispatch => "BPF dispatch",
            Category::Other => "other",
        }
    }
}

const HELPERS: &[&str] = &[
    "copy_from_user_nofault",
    "bpf_probe_read",
    "htab_",
    "__htab_",
    "bpf_lru",
    "__bpf_lru",
    "pcpu_freelist",
    "bpf_ringbuf",
    "bpf_loop",
    "bpf_map_",
    "bpf_for_each",
    "bpf_obj_memcpy",
    "bpf_get_current",
    "bpf_get_smp_processor_id",
    "ktime_get_mono_fast_ns",
];
const DISPATCH: &[&str] = &[
    "bpf_trace_run",
    "__bpf_trace_",
    "__bpf_prog_enter",
    "__bpf_prog_exit",
];

/// The category of a symbol, and its name without a BPF program's tag
/// (`bpf_prog_0123456789abcdef_sys_exit_btf` is `sys_exit_btf`).
pub fn categorise(symbol: &str) -> (Category, String) {
    if let Some(rest) = symbol.strip_prefix("bpf_prog_") {
        let name = match rest.split_once('_') {
            Some((tag, name)) if tag.len() == 16 && tag.bytes().all(|b| b.is_ascii_hexdigit()) => {
                name
            }
            _ => rest,
        };
        return (Category::Program, name.to_owned());
    }
    let category = if HELPERS.iter().any(|p| symbol.starts_with(p)) {
        Category::Helper
    } else if DISPATCH.iter().any(|p| symbol.starts_with(p)) {
        Category::Dispatch
    } else {
        Category::Other
    };
    (category, symbol.to_owned())
}

/// Samples of one process: its share of all samples, and per (category, symbol) its share of
/// the process's own samples, largest first.
pub struct ProcessProfile {
    pub name: String,
    pub share: f64,
    pub symbols: Vec<(Category, String, f64)>,
}

impl ProcessProfile {
    pub fn share(&self, category: Category) -> f64 {
        self.symbols
            .iter()
            .filter(|(c, ..)| *c == category)
            .map(|(.., share)| share)
            .sum()
    }

    pub fn symbol(&self, name: &str) -> f64 {
        self.symbols
            .iter()
            .filter(|(_, n, _)| n == name)
            .map(|(.., share)| share)
            .sum()
    }
}

pub struct Profile {
    pub samples: u64,
    pub processes: Vec<ProcessProfile>,
}

/// Sums `perf report` by process (`name_of` a thread's comm) and symbol.
pub fn summarise(data: &Path, name_of: impl Fn(&str) -> String) -> Result<Profile> {
    let report = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--sort",
            "comm,sym",
            "-i",
        ])
        .arg(data)
        .output()
        .context("running perf report")?;
    if !report.status.success() {
        bail!(
            "perf report failed: {}",
            String::from_utf8_lossy(&report.stderr)
        );
    }
    parse_report(&String::from_utf8_lossy(&report.stdout), name_of)
        .context("perf report gave no samples")
}

/// `# Samples: 12K of event 'cpu-clock'` and lines such as
/// `  3.25%  nginx  [k] copy_from_user_nofault`.
fn parse_report(text: &str, name_of: impl Fn(&str) -> String) -> Option<Profile> {
    let samples = text.lines().find_map(|line| {
        let count = line
            .strip_prefix("# Samples: ")?
            .split_whitespace()
            .next()?;
        let (digits, scale) = match count.strip_suffix('K') {
            Some(digits) => (digits, 1000.0),
            None => (count, 1.0),
        };
        Some((digits.parse::<f64>().ok()? * scale) as u64)
    })?;
    let mut totals: BTreeMap<String, BTreeMap<(Category, String), f64>> = BTreeMap::new();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let mut words = line.split_whitespace();
        let Some(share) = words
            .next()
            .and_then(|w| w.strip_suffix('%'))
            .and_then(|w| w.parse::<f64>().ok())
        else {
            continue;
        };
        let (Some(comm), Some(_), Some(symbol)) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        *totals
            .entry(name_of(comm))
            .or_default()
            .entry(categorise(symbol))
            .or_default() += share / 100.0;
    }
    let processes = totals
        .into_iter()
        .map(|(name, symbols)| {
            let share: f64 = symbols.values().sum();
            let mut symbols: Vec<(Category, String, f64)> = symbols
                .into_iter()
                .map(|((category, symbol), s)| (category, symbol, s / share))
                .collect();
            symbols.sort_by(|a, b| b.2.total_cmp(&a.2));
            ProcessProfile {
                name,
                share,
                symbols,
            }
        })
        .collect();
    Some(Profile { samples, processes })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "# Total Lost Samples: 0
#
# Samples: 12K of event 'cpu-clock'
# Event count (approx.): 2400000000
#
# Overhead  Command          Symbol
# ........  ...............  ......
#
    20.00%  nginx            [k] bpf_prog_58c7b768e5bff56c_sys_exit_btf
    10.00%  tokio-rt-worker  [k] bpf_prog_381fca179a3c6b39_response_step
     5.00%  nginx            [k] copy_from_user_nofault
     4.00%  nginx            [k] bpf_trace_run2
     1.00%  nginx            [k] bpf_prog_0011223344556677_sys_exit_btf
    20.00%  nginx            [.] ngx_http_parse_request_line
    40.00%  oha              [.] main
";

    #[test]
    fn samples_are_summed_by_process_category_and_program_name() {
        let name_of = |comm: &str| if comm == "nginx" { "nginx" } else { "oha" }.to_owned();
        let profile = parse_report(REPORT, name_of).unwrap();
        assert_eq!(profile.samples, 12_000);
        let nginx = &profile.processes[0];
        assert_eq!(nginx.name, "nginx");
        assert!((nginx.share - 0.5).abs() < 1e-9);
        // Shares of the process's own samples: 21 of 50 in sys_exit_btf, both agents' copies.
        assert!((nginx.symbol("sys_exit_btf") - 0.42).abs() < 1e-9);
        assert!((nginx.share(Category::Program) - 0.42).abs() < 1e-9);
        assert!((nginx.share(Category::Helper) - 0.1).abs() < 1e-9);
        assert!((nginx.share(Category::Dispatch) - 0.08).abs() < 1e-9);
        let oha = &profile.processes[1];
        assert!((oha.symbol("response_step") - 0.2).abs() < 1e-9);
    }

    #[test]
    fn program_names_lose_their_tag_only() {
        assert_eq!(
            categorise("bpf_prog_caf9460792936472_response_step"),
            (Category::Program, "response_step".to_owned())
        );
        assert_eq!(categorise("htab_map_hash").0, Category::Helper);
        assert_eq!(categorise("tcp_sendmsg").0, Category::Other);
    }
}
