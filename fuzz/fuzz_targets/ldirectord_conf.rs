//! ldirectord.cf (uvs's reading of it): any text either yields a configuration or names a line
//! of the text; parsing is deterministic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use uvs::config::ConfigError;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.cf");
    match uvs::config::ldirectord::parse(text, path) {
        Ok(c) => {
            let again = uvs::config::ldirectord::parse(text, path).expect("deterministic");
            assert_eq!(c.table.services().len(), again.table.services().len());
        }
        Err(ConfigError::At { line, .. }) => {
            assert!(
                line >= 1 && line <= text.lines().count().max(1),
                "line {line}"
            );
        }
        Err(_) => {}
    }
});
