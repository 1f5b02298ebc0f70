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
    fn aggregate(&mut self, kind: u32, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
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

/// `file_table`, and with `sockets` the way from a file to its socket's local port and
/// address family: `file.private_data` -> `socket.sk` -> `sock.__sk_common.skc_num` (inside
/// the anonymous members the kernel has around it) and `skc_family`.
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
            24,
            &[
                ("skc_hash", int, 0),
                ("", port_pair, 96),
                ("skc_family", short, 128),
            ],
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
            sock_family: 16,
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
