//! `/proc/<pid>/cmdline`: the script or module an interpreter runs.
//!
//! Input: the executable's name, a NUL, then the command line (NUL-separated arguments).
//! Checks: a script name is never empty and comes from one of the arguments.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor::collect::identity::{cmdline_args, script_name};

fuzz_target!(|data: &[u8]| {
    let (executable, cmdline) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &[][..]),
    };
    let executable = String::from_utf8_lossy(executable);
    let args = cmdline_args(cmdline);
    assert!(
        args.iter()
            .all(|arg| !arg.is_empty() && !arg.contains('\0'))
    );
    if let Some(name) = script_name(&executable, &args) {
        assert!(!name.is_empty(), "an empty script name from {args:?}");
        assert!(
            args.iter().any(|arg| arg.contains(&name)),
            "{name:?} from {args:?}"
        );
    }
});
