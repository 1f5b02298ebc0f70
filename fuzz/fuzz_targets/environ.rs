//! `/proc/<pid>/environ`: the OpenTelemetry service name.
//!
//! Input: the environment block (NUL-separated `KEY=value`, any bytes).
//! Checks: a name is never empty or blank-edged (it becomes `service_name`); a non-blank
//! `OTEL_SERVICE_NAME` always wins, as the first one given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor::collect::identity::otel_service_name;

fuzz_target!(|data: &[u8]| {
    let name = otel_service_name(data);
    if let Some(name) = &name {
        assert!(!name.is_empty(), "an empty service name");
        assert_eq!(name.trim(), name, "blanks around the service name");
    }
    let explicit = data.split(|&b| b == 0).find_map(|entry| {
        let value = entry.strip_prefix(b"OTEL_SERVICE_NAME=")?;
        let value = String::from_utf8_lossy(value).trim().to_owned();
        (!value.is_empty()).then_some(value)
    });
    if explicit.is_some() {
        assert_eq!(name, explicit);
    }
});
