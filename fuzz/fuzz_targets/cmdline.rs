//! `/proc/<pid>/cmdline`: the script or module an interpreter runs.
//!
//! Input: the executable's name, a NUL, then the command line (NUL-separated arguments).
//! Checks: a script name is never empty and comes from one of the arguments; the first
//! argument, taken for a working directory, gives a name that is one of its parts or none.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor::collect::identity::{app_directory, cmdline_args, script_name};

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
        // A celery worker is its project's, `<project>-celery`.
        let from_args = name.strip_suffix("-celery").unwrap_or(&name);
        assert!(
            args.iter().any(|arg| arg.contains(from_args)),
            "{name:?} from {args:?}"
        );
    }
    // A working directory's name is one of its parts, or none.
    if let Some(directory) = args.first()
        && let Some(name) = app_directory(directory)
    {
        assert!(
            !name.is_empty() && !name.contains('/'),
            "{name:?} from {directory:?}"
        );
        assert!(directory.contains(&name), "{name:?} from {directory:?}");
    }
});
