//! The configuration loader (`Config::from_yaml`: YAML text to a validated `Config`).
//!
//! Checked:
//! - no panic, in bounded time (run with `-timeout`), and the same answer (the same error
//!   text) when loaded again;
//! - a configuration the loader accepts can be served: its summary is written, and with every
//!   source delivered (empty), it translates into every group's resources, which the snapshot
//!   cache accepts (the server would otherwise start and never publish).
//!
//! Inputs that name a transcoder descriptor file, or hold a backslash (a YAML escape could
//! spell that key), are skipped: the loader reads that file, and a fuzzer must not read
//! arbitrary paths of the machine it runs on.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use voltha_xds::config::Config;
use voltha_xds::model::{Model, SourceData};
use voltha_xds::translate::translate;
use voltha_xds::xds::cache::Cache;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if text.contains("descriptor") || text.contains('\\') {
        return;
    }
    let first = Config::from_yaml(text);
    let again = Config::from_yaml(text);
    let config = match (first, again) {
        (Ok(c), Ok(_)) => c,
        (Err(a), Err(b)) => {
            assert_eq!(a.to_string(), b.to_string(), "loading is deterministic");
            return;
        }
        (a, b) => panic!("loading twice: {:?} then {:?}", a.map(|_| ()), b.map(|_| ())),
    };
    let _ = config.summary();
    let model = Model {
        sources: config
            .sources
            .iter()
            .map(|s| (s.name().to_string(), Arc::new(SourceData::default())))
            .collect(),
    };
    let groups = match translate(&model, &config) {
        Ok(g) => g,
        Err(e) => panic!("an accepted configuration does not translate: {e}"),
    };
    if let Err(e) = Cache::new().publish(&groups, &config.default_group, std::time::Instant::now()) {
        panic!("an accepted configuration's resources are refused: {e}");
    }
});
