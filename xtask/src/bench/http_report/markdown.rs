//! The Markdown section for BENCHMARKS.md: the setup, the table of figures per variant, the
//! goals, and BPF time per hook, followed by the perf and accuracy sections.

use crate::bench::{
    agent::{LOAD_GENERATORS, Variant},
    http::{Http, ROUTE},
};

use super::{
    accuracy::accuracy_markdown,
    goals::Verdict,
    perf::profile_markdown,
    summary::{ProgramFigures, Summary},
    text::{change_text, drops_text, number, paired_text, percent, us},
};

/// Table columns, left to right.
const COLUMNS: [Variant; 4] = [
    Variant::Monitor,
    Variant::ServerOnly,
    Variant::EmptyPrograms,
    Variant::NoAgent,
];

/// A table row: the figure, its goal, and one cell per column.
fn row(figure: &str, goal: &str, cell: impl Fn(Variant) -> String) -> String {
    let cells: Vec<String> = COLUMNS.iter().map(|&v| cell(v)).collect();
    format!("| {figure} | {goal} | {} |\n", cells.join(" | "))
}

pub fn markdown(http: &Http, summary: &Summary, machine: &str) -> String {
    let s = summary;
    let i = |v: Variant| v.index();
    let agent_only = |v: Variant, text: String| {
        if v == Variant::NoAgent {
            String::new()
        } else {
            text
        }
    };
    let recording_only = |v: Variant, text: String| {
        if v.records() { text } else { String::new() }
    };
    let pinning = if http.server_pinned {
        format!(
            "nginx's worker pinned to CPU 1 (`worker_cpu_affinity`), the load generator to CPU {} \
             (taskset), the agent not pinned",
            http.load_cpus
        )
    } else {
        format!(
            "one CPU: nothing pinned apart from the load generator (CPU {})",
            http.load_cpus
        )
    };
    let mut text = format!(
        "### HTTP server under load: nginx with and without the agent\n\n\
         `cargo xtask bench` ({machine}). nginx, one worker, answers `GET {ROUTE}` with a \
         13-byte body (`return 200`) over keep-alive connections; {pinning}. Four variants run \
         interleaved, {rounds} rounds each, the order rotated every round: no agent; the agent \
         as deployed (`monitor`, 1 s refresh); the agent with empty programs on exactly the \
         hooks it uses (`--empty-programs`: {hooks}), the floor of the hook choice; and the \
         agent with the load generators excluded (`--exclude-comm {LOAD_GENERATORS}`: the \
         kernel compares the name of the thread that connects, and oha's workers have a name \
         of their own), which measures nginx only, as when clients are on other hosts. With the load generator on the same \
         host, `monitor` measures both ends of every request: nginx as a server, the load \
         generator as a client. Medians over the rounds.\n\n\
         - Saturation: wrk, 1 thread, {conns} connections, {sat} s per round after a 1 s \
         warm-up. No BPF statistics (they cost time per program run). nginx's CPU time is \
         its worker's CPU time in the run (its process CPU-time clock), which includes \
         the programs that run in its syscalls; its requests per CPU second are the capacity \
         the agent leaves it, where the throughput also moves with what the agent and the \
         load generator's measured end take from the load generator's CPU.\n\
         - Fixed rate: oha, exactly {requests} requests at {rate} req/s{lowered} over {rconns} \
         connections, latency from each request's start (no coordinated-omission correction). \
         `--bpf-stats` on for every agent: BPF time per request is the run time of all the \
         agent's programs (from `kernel.bpf_stats_enabled`) divided by the requests; it \
         includes what the programs did for everything else on the host meanwhile.\n\n\
         | figure | goal | {} |\n|---|---|---|---|---|---|\n",
        COLUMNS.map(Variant::name).join(" | "),
        rounds = http.rounds,
        hooks = http
            .hooks
            .iter()
            .map(|(hook, kind)| format!("{hook} ({kind})"))
            .collect::<Vec<_>>()
            .join(", "),
        conns = http.connections,
        sat = http.saturation.as_secs(),
        requests = http.requests,
        rate = http.rate,
        lowered = if http.rate_lowered {
            " (lowered from 10,000 to half the throughput without the agent at saturation: \
             this host could not serve 10,000)"
        } else {
            ""
        },
        rconns = http.rate_connections,
    );
    text.push_str(&row("throughput at saturation, req/s", "", |v| {
        number(s.throughput[i(v)], 0)
    }));
    text.push_str(&row(
        "**throughput, of no agent's in the same round** (median, lowest-highest round)",
        ">= 97 %",
        |v| agent_only(v, paired_text(&s.throughput_ratio[i(v)])),
    ));
    text.push_str(&row("nginx CPU per request at saturation, µs", "", |v| {
        number(s.server_cpu_us_saturation[i(v)], 2)
    }));
    text.push_str(&row(
        "**nginx's requests per CPU second, of no agent's in the same round** (the capacity \
         left to it)",
        ">= 97 %",
        |v| agent_only(v, paired_text(&s.capacity_ratio[i(v)])),
    ));
    text.push_str(&row(
        &format!("p50 latency at {} req/s, µs", http.rate),
        "",
        |v| us(s.p50[i(v)]),
    ));
    text.push_str(&row("p50 against no agent's in the same round", "", |v| {
        agent_only(v, change_text(&s.p50_ratio[i(v)]))
    }));
    text.push_str(&row(
        &format!("p99 latency at {} req/s, µs", http.rate),
        "",
        |v| us(s.p99[i(v)]),
    ));
    text.push_str(&row("p99 against no agent's in the same round", "", |v| {
        agent_only(v, change_text(&s.p99_ratio[i(v)]))
    }));
    text.push_str(&row(
        &format!(
            "nginx CPU per request at {} req/s (BPF statistics on), µs",
            http.rate
        ),
        "",
        |v| number(s.server_cpu_us_fixed[i(v)], 2),
    ));
    text.push_str(&row(
        "**BPF ns per request, all programs**",
        "<= 200",
        |v| agent_only(v, number(s.bpf_ns_per_request[i(v)], 0)),
    ));
    text.push_str(&row(
        "agent CPU per 1,000 requests, at saturation, ms",
        "<= 5",
        |v| agent_only(v, number(s.cpu_ms_per_1k_saturation[i(v)], 3)),
    ));
    text.push_str(&row(
        &format!("agent CPU per 1,000 requests, at {} req/s, ms", http.rate),
        "<= 5",
        |v| agent_only(v, number(s.cpu_ms_per_1k_fixed[i(v)], 3)),
    ));
    text.push_str(&row(
        "agent peak RSS (VmHWM, highest round), MiB",
        "<= 40",
        |v| agent_only(v, number(s.peak_rss_mib[i(v)], 1)),
    ));
    text.push_str(&row(
        &format!(
            "refresh (maps read into the model), mean at {} req/s, ms",
            http.rate
        ),
        "",
        |v| agent_only(v, number(s.refresh_ms[i(v)], 3)),
    ));
    text.push_str(&row(
        "requests nginx served that the agent did not record, saturation, per round",
        "0",
        |v| recording_only(v, format!("{:?}", s.losses[i(v)].not_recorded)),
    ));
    text.push_str(&row(
        "kernel drops (HTTP and scheduler maps), all rounds",
        "0",
        |v| recording_only(v, drops_text(&s.losses[i(v)].drops)),
    ));
    text.push_str(&row("getppid loop slowdown (section below)", "", |v| {
        if matches!(v, Variant::Monitor | Variant::EmptyPrograms) {
            percent(s.getppid_slowdown[i(v)])
        } else {
            String::new()
        }
    }));

    for (variant, goals) in &s.goals {
        text.push_str(&format!("\nGoals, {}:\n\n", variant.name()));
        for goal in goals {
            text.push_str(&format!(
                "- {} {}: {} (goal {}){}\n",
                match goal.verdict {
                    Verdict::Met => "met:",
                    Verdict::Missed => "**missed**:",
                    Verdict::Inconclusive => "inconclusive:",
                },
                goal.name,
                goal.measured,
                goal.target,
                if goal.verdict == Verdict::Missed {
                    format!(", {}", goal.miss)
                } else {
                    String::new()
                }
            ));
        }
    }

    text.push_str(&programs_markdown(http, s));
    text.push_str(&profile_markdown(http));
    text.push_str(&accuracy_markdown(http, s));
    text
}

fn programs_markdown(http: &Http, s: &Summary) -> String {
    let shown = [
        Variant::Monitor,
        Variant::ServerOnly,
        Variant::EmptyPrograms,
    ];
    let names = shown.map(Variant::name).join(" / ");
    let mut text = format!(
        "\nBPF time per hook at {} req/s (medians; per request: the program's run time divided \
         by the requests; runs per request count every run on the host):\n\n\
         | hook | runs per request | ns per run: {names} | ns per request: {names} |\n\
         |---|---|---|---|\n",
        http.rate
    );
    let mut hooks: Vec<&String> = shown
        .iter()
        .flat_map(|v| s.programs[v.index()].keys())
        .collect();
    hooks.sort();
    hooks.dedup();
    for hook in hooks {
        let figure = |v: Variant, f: fn(&ProgramFigures) -> f64, decimals: usize| {
            s.programs[v.index()]
                .get(hook)
                .map_or("–".to_owned(), |p| number(f(p), decimals))
        };
        let per = |f: fn(&ProgramFigures) -> f64| shown.map(|v| figure(v, f, 1)).join(" / ");
        text.push_str(&format!(
            "| `{hook}` | {} | {} | {} |\n",
            figure(Variant::Monitor, |p| p.runs_per_request, 2),
            per(|p| p.ns_per_run),
            per(|p| p.ns_per_request),
        ));
    }
    text
}
