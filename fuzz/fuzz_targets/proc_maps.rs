//! A process's `/proc/<pid>/maps`, and the TLS libraries found in it (`probes::tls`).
//!
//! Input: the text of a maps file (lossy UTF-8).
//! Checks: each file (device, inode) is found once; a library's path is absolute, ends in a
//! `libssl.so.<version>` name and is the path field of a line of the text (with
//! ` (deleted)` after it exactly when `deleted`); its range is that line's first field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor::probes::tls_libraries::{is_tls_library, tls_libraries_in_maps};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let libraries = tls_libraries_in_maps(&text);
    for (i, library) in libraries.iter().enumerate() {
        assert!(
            libraries[..i]
                .iter()
                .all(|known| known.file != library.file),
            "{library:?} twice"
        );
        assert!(library.path.starts_with('/'), "{library:?}");
        let name = library.path.rsplit('/').next().unwrap();
        assert!(is_tls_library(name), "{library:?}");
        let suffix = if library.deleted { " (deleted)" } else { "" };
        assert!(
            text.lines().any(|line| {
                line.split(char::is_whitespace).next() == Some(library.range)
                    && line.ends_with(&format!("{}{suffix}", library.path))
            }),
            "no line gives {library:?}"
        );
    }
});
