//! What the bench is doing and how long it has left, on stderr, one line per step.

use std::time::{Duration, Instant};

pub struct Progress {
    started: Instant,
    /// The estimated time of the steps not yet started.
    remaining: Duration,
    steps: usize,
    /// Steps that began while other agents were running, and the most seen at once.
    disturbed_steps: usize,
    most_other_agents: usize,
}

impl Progress {
    /// `estimate`: the sum of the estimates of every step to come.
    pub fn new(estimate: Duration) -> Self {
        Self {
            started: Instant::now(),
            remaining: estimate,
            steps: 0,
            disturbed_steps: 0,
            most_other_agents: 0,
        }
    }

    /// Announces a step expected to take `estimate`. The bench's own agent of the previous
    /// step has exited by then, so any agent running now is someone else's.
    pub fn step(&mut self, phase: &str, detail: &str, estimate: Duration) {
        let others = running_agents();
        self.steps += 1;
        if others > 0 {
            self.disturbed_steps += 1;
            self.most_other_agents = self.most_other_agents.max(others);
        }
        eprintln!(
            "xtask bench [{} elapsed, ~{} left] {phase}: {detail}",
            clock(self.started.elapsed()),
            clock(self.remaining),
        );
        self.remaining = self.remaining.saturating_sub(estimate);
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Other agents attached during the run: their programs cost every variant alike, the
    /// baseline included.
    pub fn disturbance(&self) -> String {
        if self.disturbed_steps == 0 {
            "no other agent running".to_owned()
        } else {
            format!(
                "other `monitor` agents were running at the start of {} of {} steps (up to {} \
                 at once)",
                self.disturbed_steps, self.steps, self.most_other_agents
            )
        }
    }
}

/// Processes named `monitor` on the host.
fn running_agents() -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|entry| {
            std::fs::read_to_string(entry.path().join("comm"))
                .is_ok_and(|comm| comm.trim() == "monitor")
        })
        .count()
}

/// `3m05s`, or `42s` under a minute.
pub fn clock(duration: Duration) -> String {
    let seconds = duration.as_secs();
    if seconds < 60 {
        format!("{seconds}s")
    } else {
        format!("{}m{:02}s", seconds / 60, seconds % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_read_in_minutes_and_seconds() {
        assert_eq!(clock(Duration::from_secs(42)), "42s");
        assert_eq!(clock(Duration::from_secs(185)), "3m05s");
    }
}
