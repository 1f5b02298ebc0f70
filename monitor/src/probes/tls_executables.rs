//! Executables that carry OpenSSL themselves: Node links it in statically and exports its
//! functions (`SSL_read`, `SSL_write`, ...) from the executable, so no `libssl` file is mapped
//! to probe. An executable is one to probe when its dynamic symbol table defines the
//! functions every probed library has; the verdict is kept per file, so each executable is
//! read once (only its symbol tables are read, not the whole file).

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use object::{
    Endianness, ReadCache, ReadRef, SectionIndex, StringTable,
    elf::{FileHeader64, SHN_LORESERVE, SHN_UNDEF, SHT_DYNSYM, SHT_NOBITS, Sym64},
    read::elf::{FileHeader as _, SectionHeader as _, SectionTable, Sym as _},
};

use super::{
    tls::REQUIRED,
    tls_libraries::{FileId, Found},
};

/// Executables whose verdict is kept; past that the verdicts are forgotten and read again
/// (a host whose container images keep changing would otherwise grow this without bound).
const MAX_VERDICTS: usize = 8192;

/// The largest dynamic symbol table, and string table, read: Node's are 1.8 and 5.3 MB.
const MAX_TABLE_BYTES: u64 = 64 << 20;

/// Whether each executable file seen defines the TLS functions.
#[derive(Debug, Default)]
pub struct ExecutableVerdicts {
    carries_tls: HashMap<FileId, bool>,
}

impl ExecutableVerdicts {
    /// The executable of process `pid` (its number, as in /proc), when it carries OpenSSL: as a
    /// path from the agent through the process's root (a container's executable included), or
    /// the process's `exe` link when it was deleted since.
    pub fn tls_carrier(&mut self, pid: &str) -> Option<Found> {
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        // Kernel threads have none; a process gone meanwhile neither.
        let file = FileId::of(&fs::metadata(&exe).ok()?);
        if self.carries_tls.len() >= MAX_VERDICTS && !self.carries_tls.contains_key(&file) {
            self.carries_tls.clear();
        }
        let carries = *self
            .carries_tls
            .entry(file)
            .or_insert_with(|| defines_tls_functions(&exe));
        if !carries {
            return None;
        }
        let target = fs::read_link(&exe).ok()?;
        let target = target.to_str()?;
        // Deleted since it started (an upgraded package): only the process leads to it.
        let path = if target.ends_with(" (deleted)") {
            exe
        } else {
            PathBuf::from(format!("/proc/{pid}/root{target}"))
        };
        Some(Found { path, file })
    }
}

/// Whether the ELF file at `path` defines (not imports: a program linked against `libssl`
/// imports them) every function of [`REQUIRED`] in its dynamic symbol table. A file that
/// cannot be read or is not 64-bit ELF does not.
pub fn defines_tls_functions(path: &Path) -> bool {
    let Ok(file) = fs::File::open(path) else {
        return false;
    };
    dynamic_symbols_define(&ReadCache::new(file), &REQUIRED).unwrap_or(false)
}

/// Whether the dynamic symbol table of the ELF file in `data` defines every one of `names`.
pub fn dynamic_symbols_define<'data, R: ReadRef<'data>>(
    data: R,
    names: &[&str],
) -> object::read::Result<bool> {
    Ok(dynamic_symbol_offsets(data, names)?
        .iter()
        .all(Option::is_some))
}

/// Where in the ELF file in `data` each of `names` is defined, as the file offset a uprobe
/// takes: `None` for a name its dynamic symbol table does not define (imports it, or lacks it,
/// or defines it outside the file's contents). Only that table, its strings and the section
/// headers are read, each at once: not the (often far bigger) full symbol table an unstripped
/// executable carries, nor the rest of the file.
pub fn dynamic_symbol_offsets<'data, R: ReadRef<'data>>(
    data: R,
    names: &[&str],
) -> object::read::Result<Vec<Option<u64>>> {
    let mut offsets = vec![None; names.len()];
    let header = FileHeader64::<Endianness>::parse(data)?;
    let endian = header.endian()?;
    let sections = header.sections(endian, data)?;
    let Some(table) = sections
        .iter()
        .find(|section| section.sh_type(endian) == SHT_DYNSYM)
    else {
        return Ok(offsets);
    };
    let strings = sections.section(SectionIndex(table.sh_link(endian) as usize))?;
    // Read whole into memory: a file crafted with huge (sparse) tables is passed over.
    if table.sh_size(endian) > MAX_TABLE_BYTES || strings.sh_size(endian) > MAX_TABLE_BYTES {
        return Ok(offsets);
    }
    let symbols: &[Sym64<Endianness>] = table.data_as_array(endian, data)?;
    let strings = strings.data(endian, data)?;
    let strings = StringTable::new(strings, 0, strings.len() as u64);
    for symbol in symbols {
        if symbol.is_undefined(endian) {
            continue;
        }
        let Ok(name) = symbol.name(endian, strings) else {
            continue;
        };
        if let Some(index) = names.iter().position(|wanted| wanted.as_bytes() == name) {
            offsets[index] = file_offset(symbol, &sections, endian);
        }
    }
    Ok(offsets)
}

/// `endbr64`, the instruction that opens every function of a program built for Intel's CET
/// (`-fcf-protection`, the default of Ubuntu, Fedora and RHEL).
const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];

/// Where a uprobe on the function at file offset `offset` of the ELF file in `data` goes: past
/// a leading `endbr64` when a `push` follows it, else at `offset`.
///
/// Why: the kernel runs the instruction under a uprobe either by emulating it (pushes,
/// branches, nops) or by single-stepping a copy of it, a second trap, which a KVM guest pays
/// with an exit to the hypervisor: here 18 µs a call against 1.6 µs (BENCHMARKS.md). It
/// emulates a push but not `endbr64`. Past it the function's arguments and its return address
/// on the stack are as they were at its entry (`endbr64` changes neither), so entry and
/// return probes see what they would at the entry; a `push` there opens the function's
/// prologue, which nothing jumps back to.
pub fn probe_offset<'data, R: ReadRef<'data>>(data: R, offset: u64) -> u64 {
    let Ok(bytes) = data.read_bytes_at(offset, 6) else {
        return offset;
    };
    let push = match bytes[4..] {
        [0x50..=0x57, _] => true,
        // A push of r8-r15: the REX.B prefix first.
        [0x41, 0x50..=0x57] => true,
        _ => false,
    };
    if bytes[..4] == ENDBR64 && push {
        offset + 4
    } else {
        offset
    }
}

/// A defined symbol's address, as an offset in the file: its section's file offset plus its
/// distance from the section's address (what the kernel takes for a uprobe). `None` for a
/// symbol outside any section with contents in the file, or with inconsistent numbers.
fn file_offset<'data, R: ReadRef<'data>>(
    symbol: &Sym64<Endianness>,
    sections: &SectionTable<'data, FileHeader64<Endianness>, R>,
    endian: Endianness,
) -> Option<u64> {
    let index = symbol.st_shndx(endian);
    if index == SHN_UNDEF || index >= SHN_LORESERVE {
        return None;
    }
    let section = sections.section(SectionIndex(index.into())).ok()?;
    if section.sh_type(endian) == SHT_NOBITS {
        return None;
    }
    let into_section = symbol
        .st_value(endian)
        .checked_sub(section.sh_addr(endian))?;
    if into_section >= section.sh_size(endian) {
        return None;
    }
    section.sh_offset(endian).checked_add(into_section)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_library_that_defines_the_functions_carries_tls_and_a_program_importing_them_does_not() {
        let libssl = Path::new("/lib/x86_64-linux-gnu/libssl.so.3");
        if !libssl.exists() {
            eprintln!("skipped: no {}", libssl.display());
            return;
        }
        assert!(defines_tls_functions(libssl));
        // ApacheBench calls them from libssl (where installed); this test's own executable
        // has none.
        let ab = Path::new("/usr/bin/ab");
        if ab.exists() {
            assert!(!defines_tls_functions(ab));
        }
        assert!(!defines_tls_functions(Path::new("/proc/self/exe")));
        // Not ELF, or not there.
        assert!(!defines_tls_functions(Path::new("/proc/self/status")));
        assert!(!defines_tls_functions(Path::new("/nonexistent")));
    }

    /// The fuzz seeds: small ELF files made by fuzz/make_seeds.py.
    fn seed(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus/elf_symbols")
            .join(name);
        fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn both_functions_defined_make_a_carrier_and_imported_or_missing_ones_do_not() {
        let names = ["SSL_read", "SSL_write"];
        let carries = |name: &str| dynamic_symbols_define(&seed(name)[..], &names).unwrap();
        assert!(carries("carries_openssl"));
        assert!(!carries("imports_openssl"));
        assert!(!carries("half"));
        // Not ELF, or cut short.
        assert!(dynamic_symbols_define(&b"#!/bin/sh\n"[..], &names).is_err());
        let cut = seed("carries_openssl");
        assert!(dynamic_symbols_define(&cut[..cut.len() - 100], &names).is_err());
    }

    #[test]
    fn offsets_are_where_the_functions_are_in_the_file_and_none_for_missing_or_imported_ones() {
        let names = ["SSL_read", "SSL_write", "SSL_new", "SSL_free"];
        let carries = seed("carries_openssl");
        // The seed ends with .text (three 16-byte functions), then four section headers.
        let text_at = (carries.len() - 4 * 64 - 3 * 16) as u64;
        assert_eq!(
            dynamic_symbol_offsets(&carries[..], &names).unwrap(),
            [Some(text_at), Some(text_at + 16), Some(text_at + 32), None]
        );
        let imports = seed("imports_openssl");
        assert_eq!(
            dynamic_symbol_offsets(&imports[..], &names).unwrap(),
            [None; 4]
        );
    }

    #[test]
    fn a_probe_goes_past_endbr64_where_a_push_follows_it_and_at_the_function_otherwise() {
        let names = ["SSL_read", "SSL_write", "SSL_new"];
        let cet = seed("cet_openssl");
        let offsets: Vec<u64> = dynamic_symbol_offsets(&cet[..], &names)
            .unwrap()
            .into_iter()
            .map(Option::unwrap)
            .collect();
        let probes: Vec<u64> = offsets
            .iter()
            .map(|&offset| probe_offset(&cet[..], offset))
            .collect();
        // endbr64 then push %rbp; endbr64 then sub $0x18,%rsp; endbr64 then push %r12.
        assert_eq!(
            probes,
            [offsets[0] + 4, offsets[1], offsets[2] + 4],
            "{offsets:?}"
        );
        // Without endbr64 (a push, or ret), and where the file ends first.
        let plain = seed("carries_openssl");
        let offsets = dynamic_symbol_offsets(&plain[..], &names).unwrap();
        for offset in offsets.into_iter().map(Option::unwrap) {
            assert_eq!(probe_offset(&plain[..], offset), offset);
        }
        let end = cet.len() as u64;
        assert_eq!(probe_offset(&cet[..], end - 5), end - 5);
        assert_eq!(probe_offset(&cet[..], u64::MAX), u64::MAX);
    }

    #[test]
    fn the_offset_of_ssl_read_in_libssl_holds_the_code_the_loaded_library_runs() {
        let libssl = c"/lib/x86_64-linux-gnu/libssl.so.3";
        let path = Path::new(libssl.to_str().unwrap());
        if !path.exists() {
            eprintln!("skipped: no {}", path.display());
            return;
        }
        let file = fs::read(path).unwrap();
        let [Some(offset)] = dynamic_symbol_offsets(&file[..], &["SSL_read"]).unwrap()[..] else {
            panic!("SSL_read not found in {}", path.display());
        };
        // SAFETY: libssl's initialisers are safe to run; the handle stays open (the library
        // stays mapped) for the comparison.
        let loaded = unsafe {
            let handle = libc::dlopen(libssl.as_ptr(), libc::RTLD_NOW);
            assert!(!handle.is_null());
            let function = libc::dlsym(handle, c"SSL_read".as_ptr());
            assert!(!function.is_null());
            std::slice::from_raw_parts(function as *const u8, 32)
        };
        let offset = offset as usize;
        assert_eq!(&file[offset..offset + 32], loaded);
    }

    #[test]
    fn a_processs_executable_is_judged_once_and_kept() {
        let mut verdicts = ExecutableVerdicts::default();
        assert!(verdicts.tls_carrier("self").is_none());
        assert_eq!(verdicts.carries_tls.len(), 1);
        assert!(verdicts.tls_carrier("self").is_none());
        assert_eq!(verdicts.carries_tls.len(), 1);
        assert!(verdicts.tls_carrier("0").is_none());
    }
}
