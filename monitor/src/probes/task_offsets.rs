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
    let (file_private_data, socket_sk, sock_num) = socket.as_ref().copied().unwrap_or_default();
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

/// `file.private_data` (a socket's `struct socket *`), `socket.sk` and the local port in
/// `struct sock`.
fn socket_offsets_in(btf: &Btf) -> Result<(u32, u32, u32)> {
    Ok((
        pointer_field(btf, "file", "private_data")?,
        pointer_field(btf, "socket", "sk")?,
        int_field(btf, "sock", &["__sk_common", "skc_num"], 2)?,
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
mod tests {
    use super::*;

    /// Builds a BTF blob by hand (format: the kernel's Documentation/bpf/btf.rst).
    #[derive(Default)]
    struct BtfBuilder {
        types: Vec<u8>,
        strings: Vec<u8>,
        count: u32,
    }

    const KIND_INT: u32 = 1;
    const KIND_PTR: u32 = 2;
    const KIND_STRUCT: u32 = 4;
    const KIND_UNION: u32 = 5;
    const KIND_TYPEDEF: u32 = 8;

    impl BtfBuilder {
        fn new() -> Self {
            Self {
                strings: vec![0],
                ..Self::default()
            }
        }

        fn name(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let offset = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            offset
        }

        fn words(&mut self, words: &[u32]) {
            for word in words {
                self.types.extend_from_slice(&word.to_le_bytes());
            }
        }

        /// Returns the new type's id (ids start at 1; 0 is void).
        fn header(&mut self, name: &str, kind: u32, vlen: u32, size_or_type: u32) -> u32 {
            let name = self.name(name);
            self.words(&[name, (kind << 24) | vlen, size_or_type]);
            self.count += 1;
            self.count
        }

        fn int(&mut self, name: &str, bytes: u32) -> u32 {
            let id = self.header(name, KIND_INT, 0, bytes);
            self.words(&[bytes * 8]);
            id
        }

        fn pointer(&mut self, target: u32) -> u32 {
            self.header("", KIND_PTR, 0, target)
        }

        fn typedef(&mut self, name: &str, target: u32) -> u32 {
            self.header(name, KIND_TYPEDEF, 0, target)
        }

        /// Members as (name, type, bit offset).
        fn aggregate(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let id = self.header(name, kind, members.len() as u32, size);
            for (member, member_type, bits) in members {
                let member = self.name(member);
                self.words(&[member, *member_type, *bits]);
            }
            id
        }

        fn build(&self) -> Vec<u8> {
            let mut blob = Vec::new();
            blob.extend_from_slice(&0xeb9f_u16.to_le_bytes());
            blob.extend_from_slice(&[1, 0]); // version, flags
            let (types, strings) = (self.types.len() as u32, self.strings.len() as u32);
            for word in [24, 0, types, types, strings] {
                blob.extend_from_slice(&u32::to_le_bytes(word));
            }
            blob.extend_from_slice(&self.types);
            blob.extend_from_slice(&self.strings);
            blob
        }
    }

    /// A `task_struct` shaped like a real one: the fields sit in nested structs, behind a
    /// typedef, and (pid, tgid) inside an anonymous struct within an anonymous union.
    fn kernel_like(with_sched_info: bool) -> Btf {
        let mut btf = BtfBuilder::new();
        let u64_type = btf.int("unsigned long long", 8);
        let int = btf.int("int", 4);
        let u64_typedef = btf.typedef("u64", u64_type);
        let sched_entity = btf.aggregate(
            KIND_STRUCT,
            "sched_entity",
            24,
            &[
                ("load", u64_type, 0),
                ("sum_exec_runtime", u64_typedef, 64),
                ("prev_sum_exec_runtime", u64_type, 128),
            ],
        );
        let sched_info = btf.aggregate(
            KIND_STRUCT,
            "sched_info",
            16,
            &[("pcount", u64_type, 0), ("run_delay", u64_type, 64)],
        );
        let ids = btf.aggregate(KIND_STRUCT, "", 8, &[("pid", int, 0), ("tgid", int, 32)]);
        let wrapper = btf.aggregate(KIND_UNION, "", 8, &[("", ids, 0), ("both", u64_type, 0)]);
        let mut members = vec![
            ("flags", int, 0),
            ("se", sched_entity, 64),
            ("", wrapper, 256),
            ("policy", int, 320),
        ];
        if with_sched_info {
            members.push(("sched_info", sched_info, 384));
        }
        btf.aggregate(KIND_STRUCT, "task_struct", 64, &members);
        Btf::from_bytes(&btf.build()).expect("the fixture is valid BTF")
    }

    #[test]
    fn finds_fields_through_nested_anonymous_and_typedef_members() {
        let offsets = offsets_in(&kernel_like(true)).unwrap();
        assert_eq!(
            offsets,
            TaskAccountingOffsets {
                sum_exec_runtime: 8 + 8,
                run_delay: 48 + 8,
                pcount: 48,
                pid: 32,
                tgid: 36,
                prev_sum_exec_runtime: 8 + 16,
                policy: 40,
            }
        );
    }

    #[test]
    fn names_the_missing_field() {
        let error = offsets_in(&kernel_like(false)).unwrap_err().to_string();
        assert!(
            error.contains("task_struct.sched_info.run_delay not found"),
            "{error}"
        );
    }

    #[test]
    fn scheduler_statistics_are_kept_when_the_thread_has_arrived() {
        assert!(check_statistics_kept("88964527 803028 26\n").is_ok());
        let error = check_statistics_kept("0 0 0\n").unwrap_err().to_string();
        assert!(error.contains("does not keep"), "{error}");
        let error = check_statistics_kept("garbage").unwrap_err().to_string();
        assert!(error.contains("unexpected schedstat line"), "{error}");
    }

    #[test]
    fn refuses_a_field_of_another_size() {
        let mut btf = BtfBuilder::new();
        let int = btf.int("int", 4);
        btf.aggregate(
            KIND_STRUCT,
            "task_struct",
            8,
            &[("pid", int, 0), ("tgid", int, 32)],
        );
        let btf = Btf::from_bytes(&btf.build()).unwrap();
        let error = int_field(&btf, "task_struct", &["tgid"], 8)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("expected an aligned 8-byte integer"),
            "{error}"
        );
    }

    /// A file that cannot be mapped, as `/sys/kernel/btf/vmlinux` before Linux 6.16: a pipe
    /// opened through `/proc/self/fd`, which mmap refuses (ENODEV) and a read drains; with
    /// its writer closed, the read ends at the blob's end.
    #[test]
    fn reads_btf_that_cannot_be_mapped() {
        use std::{io::Write as _, os::fd::AsRawFd as _};

        let mut btf = BtfBuilder::new();
        let u64_type = btf.int("unsigned long long", 8);
        let int = btf.int("int", 4);
        let se = btf.aggregate(
            KIND_STRUCT,
            "sched_entity",
            8,
            &[("sum_exec_runtime", u64_type, 0)],
        );
        let info = btf.aggregate(
            KIND_STRUCT,
            "sched_info",
            16,
            &[("pcount", u64_type, 0), ("run_delay", u64_type, 64)],
        );
        btf.aggregate(
            KIND_STRUCT,
            "task_struct",
            48,
            &[
                ("flags", int, 0),
                ("pid", int, 32),
                ("tgid", int, 64),
                ("se", se, 128),
                ("sched_info", info, 192),
            ],
        );
        let (reader, mut writer) = std::io::pipe().unwrap();
        writer.write_all(&btf.build()).unwrap();
        drop(writer);
        let path = format!("/proc/self/fd/{}", reader.as_raw_fd());
        assert!(
            Btf::from_file_with_backend(&path, Backend::Mmap).is_err(),
            "the pipe was mapped: this test no longer tests the fallback"
        );
        let offsets = task_accounting_offsets(Path::new(&path)).unwrap();
        assert_eq!(
            offsets,
            TaskAccountingOffsets {
                sum_exec_runtime: 16,
                run_delay: 32,
                pcount: 24,
                pid: 4,
                tgid: 8,
                prev_sum_exec_runtime: 0,
                policy: 0,
            }
        );
    }

    /// `task->files->fdt->fd`, with the pointers the kernel's BTF has (a pointer to pointers
    /// for `fd`).
    fn file_table(fd_is_pointer: bool) -> Btf {
        file_table_with(fd_is_pointer, true)
    }

    /// `file_table`, and with `sockets` the way from a file to its socket's local port:
    /// `file.private_data` -> `socket.sk` -> `sock.__sk_common.skc_num`, inside the anonymous
    /// members the kernel has around it.
    fn file_table_with(fd_is_pointer: bool, sockets: bool) -> Btf {
        let mut btf = BtfBuilder::new();
        let int = btf.int("unsigned int", 4);
        let file = if sockets {
            let short = btf.int("unsigned short", 2);
            let ports = btf.aggregate(
                KIND_STRUCT,
                "",
                4,
                &[("skc_dport", short, 0), ("skc_num", short, 16)],
            );
            let port_pair = btf.aggregate(
                KIND_UNION,
                "",
                4,
                &[("skc_portpair", int, 0), ("", ports, 0)],
            );
            let common = btf.aggregate(
                KIND_STRUCT,
                "sock_common",
                16,
                &[("skc_hash", int, 0), ("", port_pair, 96)],
            );
            let sock = btf.aggregate(KIND_STRUCT, "sock", 16, &[("__sk_common", common, 0)]);
            let sock_pointer = btf.pointer(sock);
            btf.aggregate(
                KIND_STRUCT,
                "socket",
                16,
                &[("state", int, 0), ("sk", sock_pointer, 64)],
            );
            let void_pointer = btf.pointer(0);
            let inode = btf.aggregate(KIND_STRUCT, "inode", 8, &[("i_mode", short, 0)]);
            let inode_pointer = btf.pointer(inode);
            btf.aggregate(
                KIND_STRUCT,
                "file",
                24,
                &[
                    ("f_mode", int, 0),
                    ("private_data", void_pointer, 64),
                    ("f_inode", inode_pointer, 128),
                ],
            )
        } else {
            btf.aggregate(KIND_STRUCT, "file", 8, &[("f_mode", int, 0)])
        };
        let file_pointer = btf.pointer(file);
        let files_array = btf.pointer(file_pointer);
        let fd_type = if fd_is_pointer { files_array } else { int };
        let fdtable = btf.aggregate(
            KIND_STRUCT,
            "fdtable",
            16,
            &[("max_fds", int, 0), ("fd", fd_type, 64)],
        );
        let fdtable_pointer = btf.pointer(fdtable);
        let files = btf.aggregate(
            KIND_STRUCT,
            "files_struct",
            16,
            &[("count", int, 0), ("fdt", fdtable_pointer, 64)],
        );
        let files_pointer = btf.pointer(files);
        btf.aggregate(
            KIND_STRUCT,
            "task_struct",
            24,
            &[
                ("flags", int, 0),
                ("pid", int, 32),
                ("files", files_pointer, 128),
            ],
        );
        Btf::from_bytes(&btf.build()).unwrap()
    }

    #[test]
    fn finds_the_walk_from_a_task_to_its_open_files() {
        let offsets = file_offsets_in(&file_table(true)).unwrap();
        assert_eq!(
            offsets,
            FileTableOffsets {
                found: 1,
                task_files: 16,
                files_fdt: 8,
                fdtable_max_fds: 0,
                fdtable_fd: 8,
                socket_found: 1,
                file_private_data: 8,
                socket_sk: 8,
                sock_num: 14,
                file_inode: 16,
                inode_mode: 0,
            }
        );
    }

    #[test]
    fn a_file_table_without_the_way_to_a_socket_s_port_is_still_found() {
        let offsets = file_offsets_in(&file_table_with(true, false)).unwrap();
        assert_eq!((offsets.found, offsets.socket_found), (1, 0));
        assert_eq!(offsets.file_inode, 0, "no way to a file's kind either");
        assert_eq!(offsets.fdtable_fd, 8);
    }

    #[test]
    fn refuses_a_file_table_whose_array_is_not_a_pointer() {
        let error = file_offsets_in(&file_table(false)).unwrap_err().to_string();
        assert!(error.contains("fdtable.fd is not a pointer"), "{error}");
    }
}
