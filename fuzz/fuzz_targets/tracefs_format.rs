//! tracefs `format` files of `sched_switch` and `sched_wakeup`: the field offsets the
//! scheduler programs read.
//!
//! Input: the `sched_switch` format, a NUL, then the `sched_wakeup` format (lossily read).
//! Checks: a layout is only given from fields of the sizes the programs read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor::probes::tracefs::parse_sched_layout;

fuzz_target!(|data: &[u8]| {
    let (switch, wakeup) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &[][..]),
    };
    let switch = String::from_utf8_lossy(switch);
    let wakeup = String::from_utf8_lossy(wakeup);
    if let Ok(layout) = parse_sched_layout(&switch, &wakeup) {
        for (field, text) in [
            ("prev_pid", &switch),
            ("next_pid", &switch),
            ("pid", &wakeup),
        ] {
            assert!(
                text.contains(field),
                "{field} found in a format without it: {layout:?}"
            );
        }
    }
});
