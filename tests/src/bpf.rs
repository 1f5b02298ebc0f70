//! The kernel's BPF objects: which ones a process holds, and which ones exist.

use std::process::Command;

use serde_json::Value;

/// Ids of the BPF objects a process holds open, from its fdinfo.
#[derive(Debug, Default)]
pub struct HeldObjects {
    pub programs: Vec<u64>,
    pub maps: Vec<u64>,
    pub links: Vec<u64>,
}

/// The programs, maps and links that process `pid` holds (`prog_id:`, `map_id:`,
/// `link_id:` in its fdinfo; a link's fdinfo names its program too).
pub fn held_by(pid: u32) -> HeldObjects {
    let fdinfo = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("reading fdinfo");
    let mut held = HeldObjects::default();
    for info in fdinfo
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
    {
        for line in info.lines() {
            let (list, id) = if let Some(id) = line.strip_prefix("prog_id:") {
                (&mut held.programs, id)
            } else if let Some(id) = line.strip_prefix("map_id:") {
                (&mut held.maps, id)
            } else if let Some(id) = line.strip_prefix("link_id:") {
                (&mut held.links, id)
            } else {
                continue;
            };
            if let Ok(id) = id.trim().parse() {
                list.push(id);
            }
        }
    }
    for list in [&mut held.programs, &mut held.maps, &mut held.links] {
        list.sort_unstable();
        list.dedup();
    }
    held
}

/// Ids of every BPF object of `kind` (`prog`, `map`, `link`) on the host, from bpftool.
pub fn listed(kind: &str) -> Vec<u64> {
    shown(kind)
        .iter()
        .filter_map(|object| object["id"].as_u64())
        .collect()
}

/// The names of the programs with these ids, from bpftool (the kernel keeps 15 bytes of each).
pub fn program_names(ids: &[u64]) -> Vec<String> {
    shown("prog")
        .iter()
        .filter(|program| program["id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .filter_map(|program| program["name"].as_str().map(str::to_owned))
        .collect()
}

/// `bpftool --json <kind> show`: every BPF object of `kind` on the host.
fn shown(kind: &str) -> Vec<Value> {
    let output = Command::new("bpftool")
        .args(["--json", kind, "show"])
        .output()
        .expect("running bpftool (installed by `cargo xtask setup`)");
    assert!(
        output.status.success(),
        "bpftool {kind} show failed: {output:?}"
    );
    serde_json::from_slice::<Value>(&output.stdout)
        .ok()
        .and_then(|value| value.as_array().cloned())
        .unwrap_or_default()
}
