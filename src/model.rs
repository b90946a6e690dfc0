//! The protocol-free model of what the inputs say, and the picture of how data flows.
//!
//! ```text
//!  sources ──(latest full state, tokio::sync::watch)──▶ reconciler ──▶ translate ──▶ cache ──▶ xDS streams
//!  file / consul / kubernetes         debounce + merge into a Model      pure fn      versioned     one task each
//!                                                                                   snapshot
//! ```
//!
//! Each source publishes its latest full state; the reconciler merges them into a [`Model`]
//! (source name → endpoint sets), and `translate` turns the model plus the configuration into
//! Envoy resources. This module imports nothing of the project.

use std::collections::BTreeMap;
use std::sync::Arc;

/// The set a source delivers when it has only one (e.g. a VOLTHA core assignment).
pub const DEFAULT_SET: &str = "";

/// One backend: a host (IP or DNS name), with a port when the source knows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    pub host: String,
    pub port: Option<u16>,
    /// The backend's identity where the source has one (a VOLTHA core id).
    pub id: Option<String>,
}

/// What one source says: named sets of backends, each sorted and free of duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceData {
    pub sets: BTreeMap<String, Vec<Backend>>,
}

impl SourceData {
    /// A source with one (default) set.
    pub(crate) fn single(mut backends: Vec<Backend>) -> Self {
        backends.sort();
        backends.dedup_by(|a, b| a.host == b.host && a.port == b.port);
        SourceData {
            sets: BTreeMap::from([(DEFAULT_SET.to_string(), backends)]),
        }
    }

    pub fn set(&self, name: &str) -> &[Backend] {
        self.sets.get(name).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Everything the inputs say, by source name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    pub sources: BTreeMap<String, Arc<SourceData>>,
}
