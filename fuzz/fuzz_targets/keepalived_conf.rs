//! keepalived.conf (uvs's reading of it): any text either yields a configuration or names a line
//! of the text; parsing is deterministic. `include` lines are left out: they read other files.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use uvs::config::ConfigError;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let text: String = text
        .lines()
        .filter(|l| l.split_whitespace().next() != Some("include"))
        .flat_map(|l| [l, "\n"])
        .collect();
    let path = Path::new("fuzz.conf");
    match uvs::config::keepalived::parse(&text, path) {
        Ok(c) => {
            let again = uvs::config::keepalived::parse(&text, path).expect("deterministic");
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
