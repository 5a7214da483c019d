//! The tunnel endpoint's decapsulation (`lab::tunl0::decapsulate`, the `tunl0` stand-in) on
//! arbitrary frames, with and without a GUE port: never a panic, and what it hands the real's
//! stack is an IPv4 packet inside the frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uvs::lab::tunl0::decapsulate;

fuzz_target!(|data: &[u8]| {
    for gue in [None, Some(6080)] {
        let mut buf = data.to_vec();
        if let Ok(inner) = decapsulate(&mut buf, gue) {
            assert!(inner.end <= buf.len());
            assert_eq!(buf[inner.start] >> 4, 4, "an IPv4 packet");
        }
    }
});
