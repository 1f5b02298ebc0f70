//! The agent as the benchmarks run it: the variants compared, what its own process costs, and
//! what its scrapes say about its kernel programs.

use std::collections::{BTreeMap, BTreeSet};

use monitor_tests::{MonitorAgent, Scrape, workload::proc_cpu_seconds};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Nothing attached: the baseline.
    NoAgent,
    /// The agent as users run it.
    Monitor,
    /// The agent with programs that return at once, on exactly the hooks `Monitor` uses (its
    /// hidden `--empty-programs`): the floor of the hook choice.
    EmptyPrograms,
    /// The agent not measuring the load generators (`--exclude-comm`): only the server's side
    /// of each request, as when clients are on other hosts.
    ServerOnly,
}

/// The load generators, for `--exclude-comm`. The kernel compares the name of the thread
/// that connects, and oha connects from its tokio workers, which are named `tokio-rt-worker`
/// (no process of the agent's own is named so).
pub const LOAD_GENERATORS: &str = "wrk,oha,tokio-rt-worker";

impl Variant {
    pub const ALL: [Variant; 4] = [
        Variant::NoAgent,
        Variant::Monitor,
        Variant::EmptyPrograms,
        Variant::ServerOnly,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::NoAgent => "no agent",
            Variant::Monitor => "monitor",
            Variant::EmptyPrograms => "empty programs",
            Variant::ServerOnly => "monitor, nginx only",
        }
    }

    /// The name in bench.json.
    pub fn key(self) -> &'static str {
        match self {
            Variant::NoAgent => "no_agent",
            Variant::Monitor => "monitor",
            Variant::EmptyPrograms => "empty_programs",
            Variant::ServerOnly => "monitor_server_only",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether this variant's agent records HTTP.
    pub fn records(self) -> bool {
        matches!(self, Variant::Monitor | Variant::ServerOnly)
    }

    /// Starts this variant's agent with `args`, its refresh interval as deployed (1 s); none
    /// for `NoAgent`.
    pub fn start(self, args: &[&str]) -> Option<MonitorAgent> {
        let mut all = args.to_vec();
        match self {
            Variant::NoAgent => return None,
            Variant::Monitor => {}
            Variant::EmptyPrograms => all.push("--empty-programs"),
            Variant::ServerOnly => all.extend(["--exclude-comm", LOAD_GENERATORS]),
        }
        Some(start_as_deployed(&all))
    }
}

/// A variant with the arguments one benchmark gives its agent, under the name its table shows.
#[derive(Clone, Copy)]
pub struct Run {
    pub variant: Variant,
    pub args: &'static [&'static str],
    pub name: &'static str,
}

impl Run {
    /// This run's agent (`Variant::start`); none for `NoAgent`.
    pub fn start(self) -> Option<MonitorAgent> {
        self.variant.start(self.args)
    }
}

/// The agent with its refresh interval as deployed (1 s): the tests' 200 ms would multiply
/// its CPU per request. The tests' harness passes its own first; the last one given wins.
pub fn start_as_deployed(args: &[&str]) -> MonitorAgent {
    let mut all = vec!["--refresh-interval", "1s"];
    all.extend_from_slice(args);
    MonitorAgent::start(&all)
}

/// `variants` in the order round `round` runs them: rotated every round, so that none always
/// runs first (after a pause) or last.
pub fn order<const N: usize>(round: usize, mut variants: [Variant; N]) -> [Variant; N] {
    variants.rotate_left(round % N);
    variants
}

/// user + system CPU seconds of the agent's process so far (all its threads, exited ones
/// included), to the nanosecond: the process's CPU-time clock. /proc's clock ticks (10 ms)
/// are too coarse for an agent that works a millisecond a second; they are the fallback.
pub fn cpu_seconds(agent: &MonitorAgent) -> f64 {
    process_cpu_seconds(agent.pid())
}

/// `cpu_seconds` of any process: its CPU-time clock, else /proc's clock ticks.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let id = pid as libc::pid_t;
    let mut clock: libc::clockid_t = 0;
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointers; a pid that is gone makes the calls fail, nothing else.
    let ok = unsafe {
        libc::clock_getcpuclockid(id, &mut clock) == 0 && libc::clock_gettime(clock, &mut now) == 0
    };
    if ok {
        now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
    } else {
        proc_cpu_seconds(pid)
    }
}

/// Peak resident memory of the agent's process (VmHWM), bytes.
pub fn peak_rss_bytes(agent: &MonitorAgent) -> Option<u64> {
    super::sampler::peak_rss_bytes(agent.pid())
}

const RUN_TIME: &str = "monitor_bpf_program_run_time_seconds_total";
const RUNS: &str = "monitor_bpf_program_runs_total";

/// BPF run time (ns) and runs of one program.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProgramTotal {
    pub time_ns: f64,
    pub runs: f64,
}

/// Per-program totals from one scrape (non-zero only with `--bpf-stats`).
pub fn program_totals(scrape: &Scrape) -> BTreeMap<String, ProgramTotal> {
    let mut totals = BTreeMap::new();
    for sample in scrape.matching(RUN_TIME, &[]) {
        if let Some(program) = sample.labels.get("program") {
            let labels = [("program", program.as_str())];
            totals.insert(
                program.to_owned(),
                ProgramTotal {
                    time_ns: sample.value * 1e9,
                    runs: scrape.value(RUNS, &labels).unwrap_or(0.0),
                },
            );
        }
    }
    totals
}

/// What each program did between two scrapes.
pub fn program_deltas(
    before: &BTreeMap<String, ProgramTotal>,
    after: &BTreeMap<String, ProgramTotal>,
) -> BTreeMap<String, ProgramTotal> {
    after
        .iter()
        .map(|(program, total)| {
            let earlier = before.get(program).copied().unwrap_or_default();
            let delta = ProgramTotal {
                time_ns: total.time_ns - earlier.time_ns,
                runs: total.runs - earlier.runs,
            };
            (program.clone(), delta)
        })
        .collect()
}

/// The (hook, hook kind) pairs the agent attached.
pub fn hooks(scrape: &Scrape) -> BTreeSet<(String, String)> {
    scrape
        .matching("monitor_bpf_program_info", &[])
        .filter_map(|sample| {
            Some((
                sample.labels.get("hook")?.clone(),
                sample.labels.get("hook_kind")?.clone(),
            ))
        })
        .collect()
}

/// The sum of every series of a counter (all label values).
pub fn counter_sum(scrape: &Scrape, name: &str) -> f64 {
    scrape.matching(name, &[]).map(|sample| sample.value).sum()
}
