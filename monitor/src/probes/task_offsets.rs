//! Finds where `task_struct` keeps the kernel's own accounting of each task (run time, run-queue
//! wait, arrivals), and where a process's open files are, in the kernel's BTF. The layout of
//! these structs changes with every kernel and configuration, and rustc emits no CO-RE
//! relocations, so the offsets are looked up here at start-up and handed to the programs as
//! constants.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use btf_rs::{Backend, Btf, Type};
use monitor_common::{http::FileTableOffsets, sched::TaskAccountingOffsets};

/// Where the kernel publishes its own BTF.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The offsets of the five fields the switch and tick programs read; an error names what is missing
/// (e.g. `sched_info`, absent without `CONFIG_SCHED_INFO`).
pub fn task_accounting_offsets(btf_path: &Path) -> Result<TaskAccountingOffsets> {
    offsets_in(&open_btf(btf_path)?)
}

/// The offsets of the walk from a task to the open file behind a descriptor
/// (`task->files->fdt->fd[n]`), for the programs that follow connections passed between
/// processes.
pub fn file_table_offsets(btf_path: &Path) -> Result<FileTableOffsets> {
    file_offsets_in(&open_btf(btf_path)?)
}

fn file_offsets_in(btf: &Btf) -> Result<FileTableOffsets> {
    let socket = socket_offsets_in(btf);
    if let Err(error) = &socket {
        log::debug!("a socket's local port is not read in the kernel: {error:#}");
    }
    let (file_private_data, socket_sk, sock_num, sock_family) =
        socket.as_ref().copied().unwrap_or_default();
    let inode = inode_offsets_in(btf);
    if let Err(error) = &inode {
        log::debug!("a file's kind is not read in the kernel: {error:#}");
    }
    let (file_inode, inode_mode) = inode.unwrap_or_default();
    Ok(FileTableOffsets {
        found: 1,
        task_files: pointer_field(btf, "task_struct", "files")?,
        files_fdt: pointer_field(btf, "files_struct", "fdt")?,
        fdtable_max_fds: int_field(btf, "fdtable", &["max_fds"], 4)?,
        fdtable_fd: pointer_field(btf, "fdtable", "fd")?,
        socket_found: u32::from(socket.is_ok()),
        file_private_data,
        socket_sk,
        sock_num,
        sock_family,
        file_inode,
        inode_mode,
    })
}

/// `file.f_inode` and `inode.i_mode`: whether a descriptor is a socket.
fn inode_offsets_in(btf: &Btf) -> Result<(u32, u32)> {
    Ok((
        pointer_field(btf, "file", "f_inode")?,
        int_field(btf, "inode", &["i_mode"], 2)?,
    ))
}

/// `file.private_data` (a socket's `struct socket *`), `socket.sk`, and the local port and
/// address family in `struct sock`.
fn socket_offsets_in(btf: &Btf) -> Result<(u32, u32, u32, u32)> {
    Ok((
        pointer_field(btf, "file", "private_data")?,
        pointer_field(btf, "socket", "sk")?,
        int_field(btf, "sock", &["__sk_common", "skc_num"], 2)?,
        int_field(btf, "sock", &["__sk_common", "skc_family"], 2)?,
    ))
}

/// The byte offset of the pointer `name` in the struct called `outer`.
fn pointer_field(btf: &Btf, outer: &str, name: &str) -> Result<u32> {
    let container = named_struct(btf, outer)?;
    let (bits, member_type) = find_member(btf, &container, name)?
        .ok_or_else(|| anyhow!("{outer}.{name} not found in the kernel's BTF"))?;
    if !matches!(resolve(btf, member_type)?, Type::Ptr(_)) {
        bail!("{outer}.{name} is not a pointer in the kernel's BTF");
    }
    if !bits.is_multiple_of(64) {
        bail!("{outer}.{name} is not 8-byte aligned (bit {bits})");
    }
    Ok(bits / 8)
}

/// Mapped, not parsed in full where the kernel allows it (only a few types are looked at, and
/// a full parse costs tens of milliseconds and megabytes, freed right after). Kernels before
/// 6.16 cannot map `/sys/kernel/btf/vmlinux`: there it is read and parsed.
pub(super) fn open_btf(path: &Path) -> Result<Btf> {
    if let Ok(btf) = Btf::from_file_with_backend(path, Backend::Mmap) {
        return Ok(btf);
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Btf::from_bytes(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// Checks that the kernel keeps its scheduler statistics up to date, from the text of
/// `/proc/thread-self/schedstat` (run time, wait time and arrivals of the calling thread). The
/// fields exist wherever `CONFIG_SCHED_INFO` is set, but kernels before 5.14 only maintained
/// them while delay accounting or schedstats were on. The calling thread has arrived on a CPU
/// at least once, so a count of 0 means they are not kept.
pub fn check_statistics_kept(schedstat: &str) -> Result<()> {
    let arrivals: u64 = schedstat
        .split_whitespace()
        .nth(2)
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| anyhow!("unexpected schedstat line {:?}", schedstat.trim()))?;
    if arrivals == 0 {
        bail!("the kernel does not keep its scheduler statistics (schedstat shows no arrivals)");
    }
    Ok(())
}

fn offsets_in(btf: &Btf) -> Result<TaskAccountingOffsets> {
    let field = |path: &[&str], size: usize| int_field(btf, "task_struct", path, size);
    let offsets = TaskAccountingOffsets {
        sum_exec_runtime: field(&["se", "sum_exec_runtime"], 8)?,
        run_delay: field(&["sched_info", "run_delay"], 8)?,
        pcount: field(&["sched_info", "pcount"], 8)?,
        pid: field(&["pid"], 4)?,
        tgid: field(&["tgid"], 4)?,
        // Optional: without them, a run whose arrival the switch program did not see goes
        // uncounted.
        prev_sum_exec_runtime: field(&["se", "prev_sum_exec_runtime"], 8).unwrap_or(0),
        policy: field(&["policy"], 4).unwrap_or(0),
    };
    if !offsets.is_complete() {
        bail!("a field of task_struct sits at offset 0: {offsets:?}");
    }
    Ok(offsets)
}

/// The byte offset of the `size`-byte integer at `path` (member names, outermost first) in the
/// struct called `outer`. Members of anonymous structs and unions are searched through.
fn int_field(btf: &Btf, outer: &str, path: &[&str], size: usize) -> Result<u32> {
    let describe = || format!("{outer}.{}", path.join("."));
    let mut current = named_struct(btf, outer)?;
    let mut bits = 0u32;
    for name in path {
        let (offset, member_type) = find_member(btf, &current, name)?
            .ok_or_else(|| anyhow!("{} not found in the kernel's BTF", describe()))?;
        bits = bits
            .checked_add(offset)
            .ok_or_else(|| anyhow!("{} lies beyond 4 GiB", describe()))?;
        current = resolve(btf, member_type)?;
    }
    let Type::Int(int) = &current else {
        bail!("{} is not an integer in the kernel's BTF", describe());
    };
    if int.size() != size || !bits.is_multiple_of(8 * size as u32) {
        bail!(
            "{} is {} bytes at bit {bits}; expected an aligned {size}-byte integer",
            describe(),
            int.size()
        );
    }
    Ok(bits / 8)
}

fn named_struct(btf: &Btf, name: &str) -> Result<Type> {
    btf.resolve_types_by_name(name)
        .with_context(|| format!("struct {name} not found in the kernel's BTF"))?
        .into_iter()
        .find(|candidate| matches!(candidate, Type::Struct(_)))
        .ok_or_else(|| anyhow!("struct {name} not found in the kernel's BTF"))
}

/// The bit offset and type of member `name` of a struct or union, looking inside anonymous
/// members too.
fn find_member(btf: &Btf, container: &Type, name: &str) -> Result<Option<(u32, Type)>> {
    let members = match container {
        Type::Struct(members) | Type::Union(members) => &members.members,
        _ => return Ok(None),
    };
    for member in members {
        let member_name = btf.resolve_name(member).unwrap_or_default();
        let member_type = btf.resolve_chained_type(member)?;
        if member_name == name {
            return Ok(Some((member.bit_offset(), member_type)));
        }
        if member_name.is_empty() {
            let inner = resolve(btf, member_type)?;
            if let Some((offset, found)) = find_member(btf, &inner, name)? {
                return Ok(Some((member.bit_offset() + offset, found)));
            }
        }
    }
    Ok(None)
}

/// Follows typedefs and qualifiers to the type they name.
fn resolve(btf: &Btf, mut current: Type) -> Result<Type> {
    // Chains are short; the bound only guards against a malformed (cyclic) BTF.
    for _ in 0..32 {
        let next = match &current {
            Type::Typedef(inner) => btf.resolve_chained_type(inner)?,
            Type::Volatile(inner) => btf.resolve_chained_type(inner)?,
            Type::Const(inner) => btf.resolve_chained_type(inner)?,
            Type::Restrict(inner) => btf.resolve_chained_type(inner)?,
            Type::TypeTag(inner) => btf.resolve_chained_type(inner)?,
            _ => return Ok(current),
        };
        current = next;
    }
    bail!("a type chain in the kernel's BTF does not end")
}

#[cfg(test)]
mod tests;
