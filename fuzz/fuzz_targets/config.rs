//! The config loader: any text must load or give errors, never panic. Inputs that mention
//! `include` or `token_file` are skipped: they read the file system by design (an include glob
//! such as `/**/*` walks all of it), which is not what this target explores.
#![no_main]

use std::path::Path;

use coze_watch::config::{self, Mode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.contains("include") || text.contains("token_file") {
        return;
    }
    let env = |name: &str| match name {
        "COZE_API_TOKEN" => Some("pat_fuzz".to_string()),
        "HOME" => Some("/nonexistent".to_string()),
        _ => None,
    };
    for mode in [Mode::Strict, Mode::Lint] {
        match config::load_text(text, Path::new("/nonexistent/config.yaml"), &env, mode) {
            Ok(loaded) => {
                let _ = loaded.config.worst_case_requests_per_day();
            }
            Err(diags) => {
                for e in diags.errors {
                    let _ = e.to_string();
                }
            }
        }
    }
});
