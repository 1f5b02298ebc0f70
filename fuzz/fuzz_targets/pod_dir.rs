//! The kubelet's pod log directory names, `<namespace>_<pod>_<uid>`.
//!
//! Input: a directory name (any bytes, read lossily as the agent does).
//! Checks: the parts are non-empty, the first two without `_`, and put back together they
//! are the name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor::collect::identity::parse_pod_dir;

fuzz_target!(|data: &[u8]| {
    let name = String::from_utf8_lossy(data);
    let Some((namespace, pod, uid)) = parse_pod_dir(&name) else {
        return;
    };
    assert!(!namespace.is_empty() && !namespace.contains('_'));
    assert!(!pod.is_empty() && !pod.contains('_'));
    assert_eq!(uid.len(), 36);
    assert_eq!(format!("{namespace}_{pod}_{uid}"), name);
});
