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
    elf::{FileHeader64, SHT_DYNSYM, Sym64},
    read::elf::{FileHeader as _, SectionHeader as _, Sym as _},
};

use super::tls::{FileId, Found, REQUIRED};

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
/// Only that table and its strings are read, each at once: not the (often far bigger) full
/// symbol table an unstripped executable carries, nor the rest of the file.
pub fn dynamic_symbols_define<'data, R: ReadRef<'data>>(
    data: R,
    names: &[&str],
) -> object::read::Result<bool> {
    let header = FileHeader64::<Endianness>::parse(data)?;
    let endian = header.endian()?;
    let sections = header.sections(endian, data)?;
    let Some(table) = sections
        .iter()
        .find(|section| section.sh_type(endian) == SHT_DYNSYM)
    else {
        return Ok(false);
    };
    let strings = sections.section(SectionIndex(table.sh_link(endian) as usize))?;
    // Read whole into memory: a file crafted with huge (sparse) tables is passed over.
    if table.sh_size(endian) > MAX_TABLE_BYTES || strings.sh_size(endian) > MAX_TABLE_BYTES {
        return Ok(false);
    }
    let symbols: &[Sym64<Endianness>] = table.data_as_array(endian, data)?;
    let strings = strings.data(endian, data)?;
    let strings = StringTable::new(strings, 0, strings.len() as u64);
    let mut defined = vec![false; names.len()];
    for symbol in symbols {
        if symbol.is_undefined(endian) {
            continue;
        }
        let Ok(name) = symbol.name(endian, strings) else {
            continue;
        };
        if let Some(index) = names.iter().position(|wanted| wanted.as_bytes() == name) {
            defined[index] = true;
        }
    }
    Ok(defined.iter().all(|&defined| defined))
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
    fn a_processs_executable_is_judged_once_and_kept() {
        let mut verdicts = ExecutableVerdicts::default();
        assert!(verdicts.tls_carrier("self").is_none());
        assert_eq!(verdicts.carries_tls.len(), 1);
        assert!(verdicts.tls_carrier("self").is_none());
        assert_eq!(verdicts.carries_tls.len(), 1);
        assert!(verdicts.tls_carrier("0").is_none());
    }
}
