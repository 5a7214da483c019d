//! The TOML configuration parser: any text is either a valid configuration or an error that
//! names a line within the text; never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use uvs::config::ConfigError;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match uvs::config::toml_file::parse(text, Path::new("fuzz.toml")) {
        Ok(_) => {}
        Err(ConfigError::At { line, .. }) => {
            assert!(
                line >= 1 && line <= text.lines().count().max(1) + 1,
                "line {line}"
            );
        }
        Err(_) => {}
    }
});
