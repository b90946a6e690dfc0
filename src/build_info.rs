//! What this binary is: the package version and the source revision it was built from (set by
//! `build.rs`: `VOLTHA_XDS_REVISION` from the build's environment, else `git rev-parse`, else
//! `unknown`). Shown in `--version`, the start log line and `voltha_xds_build_info`.

/// The package version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The source revision (a short commit hash), or `unknown`.
pub const REVISION: &str = env!("VOLTHA_XDS_REVISION");

/// `VERSION (REVISION)`, for `--version`.
pub const LONG_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("VOLTHA_XDS_REVISION"), ")");

/// The longest host name kept in [`identifier`] (a DNS name's limit).
const MAX_HOST: usize = 253;

/// `voltha-xds VERSION (REVISION) on HOST`: the `control_plane.identifier` of every xDS
/// response, so Envoy's `control_plane.identifier` stat and CSDS name the server and the
/// replica (the pod name, in Kubernetes) that configured it. HOST is the kernel's host name,
/// else `HOSTNAME`, else `unknown`.
pub(crate) fn identifier() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_HOST)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    format!("voltha-xds {LONG_VERSION} on {host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identifier_names_the_version_the_revision_and_the_host() {
        let id = identifier();
        let host = id
            .strip_prefix(&format!("voltha-xds {VERSION} ({REVISION}) on "))
            .unwrap_or_else(|| panic!("{id:?}"));
        assert!(!host.is_empty() && host.len() <= MAX_HOST, "{id:?}");
        assert!(!host.chars().any(char::is_control), "{id:?}");
    }

    #[test]
    fn revision_is_a_short_plain_string() {
        assert!(!REVISION.is_empty() && REVISION.len() <= 64, "{REVISION:?}");
        assert!(
            REVISION
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c)),
            "{REVISION:?}"
        );
        assert_eq!(LONG_VERSION, format!("{VERSION} ({REVISION})"));
    }
}
