//! Developer tasks: `cargo xtask <setup|build|run|lint|test|bench|compare|churn|soak|fuzz|image>`.

mod bench;
mod build;
mod cmd;
mod fuzz;
mod guest_kernel;
mod image;
mod lint;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Set up, build, run, test and benchmark monitor", long_about = None)]
struct Xtask {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (apt packages, kubernetes-validate from PyPI,
    /// nightly rust-src, clippy and rustfmt, bpf-linker, a pinned kustomize, podman's
    /// rlimit setting). Idempotent; takes seconds when everything is there.
    Setup,
    /// Set up, then build the agent (release) with its BPF programs embedded:
    /// target/release/monitor.
    Build,
    /// Set up, build and run the agent as root; arguments after `--` go to monitor.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then cargo fmt --check, clippy -D warnings (the BPF crate linted on its own),
    /// cargo check of the fuzz targets.
    Lint,
    /// Set up, lint, run the unit tests, build, and run the integration tests (as root).
    Test {
        /// Only run integration tests whose name contains this.
        filter: Option<String>,
    },
    /// Measure what the agent costs (nginx under load with and without it, against empty
    /// programs on its hooks; a getppid loop; BPF time per context switch; start-up time;
    /// userspace micro-benchmarks) and how exactly it counts; write BENCHMARKS.md and
    /// target/bench/bench.json. About 15 minutes; installs wrk and oha if missing.
    Bench {
        /// A short smoke run (about 3 minutes): target/bench/bench.json only.
        #[arg(long)]
        quick: bool,
        /// Run only this benchmark: http, syscalls, sched, startup or userspace.
        #[arg(long)]
        only: Option<String>,
    },
    /// Judge a change: the quick HTTP benchmark (`bench --quick --only http`) run alternately
    /// with another build of the agent and with this tree's, several times; prints medians of
    /// both and writes target/bench/compare.json. About 3 minutes per run and build. Make a
    /// baseline with e.g. `git worktree add /tmp/base <commit> && cargo build --release
    /// --manifest-path /tmp/base/Cargo.toml -p monitor` (then /tmp/base/target/release/monitor).
    Compare {
        /// The other build's agent binary.
        #[arg(long)]
        baseline: std::path::PathBuf,
        /// Runs per build.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// 200,000 short connections, 100,000 distinct paths and 5,000 processes that serve one
    /// request and exit, against one agent: exact counts, peak RSS, map entries and series
    /// (BENCHMARKS.md, section churn). A few minutes.
    Churn {
        /// A small run (seconds): target/bench/churn.json only.
        #[arg(long)]
        quick: bool,
    },
    /// Mixed load against one agent for a while, its RSS, map entries and series sampled every
    /// 10 s; fails unless every request is counted and they stay within 10% after the warm-up
    /// (BENCHMARKS.md, section soak, for runs of 10 minutes or more).
    Soak {
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
    /// Run every cargo-fuzz target in fuzz/ for a bounded time each (nightly; installs
    /// cargo-fuzz when missing). Not part of `test`.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only targets whose name contains this.
        filter: Option<String>,
    },
    /// Build the container image with podman: the agent, statically linked, alone in an image
    /// made by deploy/container/Containerfile.binary. MONITOR_IMAGE names it (default
    /// localhost/monitor:latest).
    Image,
}

fn main() -> std::process::ExitCode {
    let xtask = Xtask::parse();
    let result = match xtask.task {
        Task::Setup => setup::setup(),
        Task::Build => setup::setup().and_then(|()| build::build_release()),
        Task::Run { args } => build::run(&args),
        Task::Lint => setup::setup().and_then(|()| lint::lint()),
        Task::Test { filter } => test::test(filter.as_deref()),
        Task::Bench { quick, only } => bench::bench(quick, only.as_deref()),
        Task::Compare { baseline, runs } => bench::compare(&baseline, runs),
        Task::Churn { quick } => bench::churn(quick),
        Task::Soak { minutes } => bench::soak(minutes),
        Task::Fuzz { seconds, filter } => fuzz::fuzz(seconds, filter.as_deref()),
        Task::Image => image::image(),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
