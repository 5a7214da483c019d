//! The ipvsadm-save rules parser: any text either yields a table or names its first bad line;
//! a table it yields round-trips through a second parse of the same text (deterministic).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use uvs::config::ConfigError;
use uvs::model::ServiceTable;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = ServiceTable::new();
    match uvs::config::rules::parse(text, Path::new("fuzz.rules"), &base) {
        Ok(t) => {
            let again = uvs::config::rules::parse(text, Path::new("fuzz.rules"), &base).unwrap();
            assert_eq!(t.services().len(), again.services().len());
        }
        Err(ConfigError::At { line, .. }) => {
            assert!(line >= 1 && line <= text.lines().count(), "line {line}");
        }
        Err(_) => {}
    }
});
