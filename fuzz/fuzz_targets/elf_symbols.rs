//! An executable's dynamic symbol table, read to tell whether it carries OpenSSL
//! (`probes::tls_executables`): any user may run a file crafted to mislead the agent.
//!
//! Input: the bytes of a file.
//! Checks: no panic; a file said to define `SSL_read` and `SSL_write` holds both names,
//! NUL-terminated (its string table does); the functions' file offsets (where the uprobes go)
//! are found for exactly the names said to be defined, and a probe goes at most past an
//! `endbr64` there.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor::probes::tls_executables::{
    dynamic_symbol_offsets, dynamic_symbols_define, probe_offset,
};

fuzz_target!(|data: &[u8]| {
    let names = ["SSL_read", "SSL_write"];
    if dynamic_symbols_define(data, &names).unwrap_or(false) {
        for name in names {
            let terminated = [name.as_bytes(), b"\0"].concat();
            assert!(
                data.windows(terminated.len())
                    .any(|window| window == terminated),
                "{name} defined without its name in the file"
            );
        }
    }
    let offsets = dynamic_symbol_offsets(data, &names);
    let all_found = offsets
        .as_ref()
        .is_ok_and(|offsets| offsets.iter().all(Option::is_some));
    assert_eq!(
        all_found,
        dynamic_symbols_define(data, &names).unwrap_or(false)
    );
    for offset in offsets.into_iter().flatten().flatten() {
        let probe = probe_offset(data, offset);
        assert!(
            probe == offset || probe == offset + 4,
            "{offset} -> {probe}"
        );
    }
});
