//! What this binary is: the package version and the source revision it was built from (set by
//! `build.rs`: `VOLTHA_XDS_REVISION` from the build's environment, else `git rev-parse`, else
//! `unknown`). Shown in `--version`, the start log line and `voltha_xds_build_info`.

/// The package version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The source revision (a short commit hash), or `unknown`.
pub const REVISION: &str = env!("VOLTHA_XDS_REVISION");

/// `VERSION (REVISION)`, for `--version`.
pub const LONG_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("VOLTHA_XDS_REVISION"), ")");

#[cfg(test)]
mod tests {
    use super::*;

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
