//! tracefs: find (or mount) it, and read the field layout of classic tracepoints from their
//! `format` files, so the kernel programs never rely on offsets compiled in.

use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use monitor_common::sched::SchedTracepointLayout;

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// Returns the tracefs root, mounting tracefs at /sys/kernel/tracing when it is not mounted.
pub fn ensure_mounted() -> Result<PathBuf> {
    for root in [TRACEFS, DEBUGFS_TRACING] {
        if Path::new(root).join("events").is_dir() {
            return Ok(PathBuf::from(root));
        }
    }
    let target = CString::new(TRACEFS)?;
    let fstype = CString::new("tracefs")?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        bail!("tracefs is not mounted and mounting it at {TRACEFS} failed: {error}");
    }
    log::info!("mounted tracefs at {TRACEFS}");
    Ok(PathBuf::from(TRACEFS))
}

/// The offset of the `size`-byte `field` in a `<category>:<event>` record under `root`.
pub fn field_offset(
    root: &Path,
    (category, event): (&str, &str),
    field: &str,
    size: u32,
) -> Result<u32> {
    let path = root
        .join("events")
        .join(category)
        .join(event)
        .join("format");
    let format =
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    field_of_size(&format, field, size)
}

/// Reads the layout of `sched:sched_switch` and `sched:sched_wakeup` under `root`.
pub fn sched_layout(root: &Path) -> Result<SchedTracepointLayout> {
    let read = |event: &str| {
        let path = root.join("events/sched").join(event).join("format");
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    parse_sched_layout(&read("sched_switch")?, &read("sched_wakeup")?)
}

pub fn parse_sched_layout(switch: &str, wakeup: &str) -> Result<SchedTracepointLayout> {
    let prev_state = field(switch, "prev_state")?;
    if prev_state.size != 8 && prev_state.size != 4 {
        bail!(
            "sched_switch.prev_state has unexpected size {}",
            prev_state.size
        );
    }
    Ok(SchedTracepointLayout {
        switch_prev_pid: field_of_size(switch, "prev_pid", 4)?,
        switch_prev_state: prev_state.offset,
        switch_next_pid: field_of_size(switch, "next_pid", 4)?,
        wakeup_pid: field_of_size(wakeup, "pid", 4)?,
        preempt_marker: preempt_marker(switch),
    })
}

#[derive(Debug, PartialEq, Eq)]
struct Field {
    offset: u32,
    size: u32,
}

/// Finds `field:<type> <name>;\toffset:N;\tsize:M;` in a format file.
fn field(format: &str, name: &str) -> Result<Field> {
    for line in format.lines() {
        let mut parts = line.trim().split(';').map(str::trim);
        let Some(declaration) = parts.next().and_then(|d| d.strip_prefix("field:")) else {
            continue;
        };
        let declared = declaration
            .rsplit(|c: char| c.is_whitespace() || c == '*')
            .next();
        if declared != Some(name) {
            continue;
        }
        let mut offset = None;
        let mut size = None;
        for part in parts {
            if let Some(value) = part.strip_prefix("offset:") {
                offset = value.parse().ok();
            } else if let Some(value) = part.strip_prefix("size:") {
                size = value.parse().ok();
            }
        }
        return match (offset, size) {
            (Some(offset), Some(size)) => Ok(Field { offset, size }),
            _ => Err(anyhow!("malformed format line for field `{name}`: {line}")),
        };
    }
    Err(anyhow!("field `{name}` not found in tracepoint format"))
}

fn field_of_size(format: &str, name: &str, size: u32) -> Result<u32> {
    let found = field(format, name)?;
    if found.size != size {
        bail!("field `{name}` has size {}, expected {size}", found.size);
    }
    Ok(found.offset)
}

/// The `prev_state` bit that sched_switch sets for a preempted task (`TASK_REPORT_MAX`): one
/// above the highest state flag that the print format names (`{ 0x00000080, "I" }` -> 0x100).
/// 0 when the format cannot be read that way; then only state 0 (running) counts as runnable.
fn preempt_marker(switch: &str) -> u64 {
    let Some(flags) = switch.split("__print_flags(").nth(1) else {
        return 0;
    };
    let highest = flags
        .split('{')
        .skip(1)
        .filter_map(|entry| entry.split(',').next())
        .filter_map(|value| u64::from_str_radix(value.trim().trim_start_matches("0x"), 16).ok())
        .max();
    highest.map_or(0, |flag| flag << 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SWITCH: &str = include_str!("../../tests/fixtures/sched_switch.format");
    const WAKEUP: &str = include_str!("../../tests/fixtures/sched_wakeup.format");

    #[test]
    fn reads_sched_offsets_from_format_files() {
        let layout = parse_sched_layout(SWITCH, WAKEUP).unwrap();
        assert_eq!(
            layout,
            SchedTracepointLayout {
                switch_prev_pid: 24,
                switch_prev_state: 32,
                switch_next_pid: 56,
                wakeup_pid: 24,
                preempt_marker: 0x100,
            }
        );
    }

    #[test]
    fn finds_a_pointer_argument_of_a_syscall_entry() {
        let format = include_str!("../../tests/fixtures/sys_enter_sendmsg.format");
        // `field:struct user_msghdr * msg;`: the name follows the `*`.
        assert_eq!(field_of_size(format, "msg", 8).unwrap(), 24);
        assert_eq!(field_of_size(format, "fd", 8).unwrap(), 16);
        let dir = tempfile::tempdir().unwrap();
        let event = dir.path().join("events/syscalls/sys_enter_sendmsg");
        std::fs::create_dir_all(&event).unwrap();
        std::fs::write(event.join("format"), format).unwrap();
        let offset = field_offset(dir.path(), ("syscalls", "sys_enter_sendmsg"), "msg", 8);
        assert_eq!(offset.unwrap(), 24);
        assert!(field_offset(dir.path(), ("syscalls", "sys_enter_close"), "fd", 8).is_err());
    }

    #[test]
    fn missing_field_is_an_error_not_a_guess() {
        let error = parse_sched_layout("format:\n", WAKEUP).unwrap_err();
        assert!(error.to_string().contains("prev_state"), "{error}");
    }

    #[test]
    fn unknown_print_format_disables_preempt_detection() {
        let without_flags = SWITCH.replace("__print_flags(", "print(");
        assert_eq!(preempt_marker(&without_flags), 0);
    }
}
