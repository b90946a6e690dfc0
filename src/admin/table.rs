//! The text table of `voltha-xds status`, in the manner of `istioctl proxy-status`: one row per
//! Envoy, per type its state and versions, the time since its last ACK; then the current
//! snapshot of each group and the errors of the NACKed types.
//!
//! Per-type cells:
//! - `SYNCED <acked>`: the ACKed version is the group's current one;
//! - `STALE <acked> -> <current>`: a response is in flight, or the current version is not
//!   sent yet (`-` when nothing was ever ACKed);
//! - `NACKED <rejected>`: the last response was rejected (the error is listed below the table);
//! - `NOT SENT`: nothing sent for that type.
//!
//! Versions are shortened to their first 8 characters.

use super::view::{NodeTypeView, StatusView};
use crate::xds::status::SyncState;

const TYPES: [&str; 4] = ["cds", "eds", "lds", "rds"];

/// Renders the whole report.
pub fn render(v: &StatusView) -> String {
    let mut out = String::new();
    if v.nodes.is_empty() {
        out.push_str("no Envoy is connected\n");
    } else {
        let mut rows: Vec<Vec<String>> = vec![["NODE", "CLUSTER", "GROUP", "CDS", "EDS", "LDS", "RDS", "LAST ACK"]
            .iter()
            .map(|s| s.to_string())
            .collect()];
        for n in &v.nodes {
            let mut row = vec![
                clean(&n.node_id),
                clean(&n.node_cluster),
                n.group.as_deref().map(clean).unwrap_or_else(|| "-".into()),
            ];
            for ty in TYPES {
                row.push(n.types.get(ty).map(cell).unwrap_or_else(|| "NOT SENT".into()));
            }
            row.push(match n.last_ack_at() {
                Some(t) => format!("{} ago", age(v.generated_at - t)),
                None => "never".into(),
            });
            rows.push(row);
        }
        out.push_str(&align(&rows));
    }

    out.push('\n');
    match v.generation {
        None => out.push_str("no snapshot has been built yet\n"),
        Some(g) => {
            out.push_str(&format!(
                "snapshot generation {g}, default group {}\n",
                v.default_group.as_deref().map(clean).unwrap_or_default()
            ));
            let mut rows = vec![["GROUP", "CDS", "EDS", "LDS", "RDS"]
                .iter()
                .map(|s| s.to_string())
                .collect()];
            for grp in &v.groups {
                let mut row = vec![clean(&grp.name)];
                for ty in TYPES {
                    row.push(match grp.types.get(ty) {
                        Some(t) => format!("{} ({})", short(&t.version), t.resources),
                        None => "-".into(),
                    });
                }
                rows.push(row);
            }
            out.push_str(&align(&rows));
        }
    }

    let nacked: Vec<String> = v
        .nodes
        .iter()
        .flat_map(|n| {
            TYPES.iter().filter_map(move |ty| {
                let t = n.types.get(*ty)?;
                let nack = t.nack.as_ref().filter(|_| t.state == SyncState::Nacked)?;
                Some(format!(
                    "  {} {ty} {}: {}\n",
                    clean(&n.node_id),
                    short(&nack.version),
                    clean(&nack.error)
                ))
            })
        })
        .collect();
    if !nacked.is_empty() {
        out.push_str("\nNACKED:\n");
        out.extend(nacked);
    }
    // A configuration reload that was not applied: the file on disk is not what runs.
    if let Some(r) = v.config.as_ref().and_then(|c| c.last_reload.as_ref()) {
        if r.result != "ok" {
            out.push_str(&format!(
                "\nCONFIGURATION RELOAD {} ({} ago, {}); the running configuration is kept:\n",
                clean(&r.result).to_uppercase(),
                age(v.generated_at - r.at),
                clean(&r.trigger)
            ));
            for e in &r.errors {
                out.push_str(&format!("  {}\n", clean(e)));
            }
        }
    }
    out
}

/// One per-type cell.
pub(crate) fn cell(t: &NodeTypeView) -> String {
    match t.state {
        SyncState::Synced => format!("SYNCED {}", t.acked_version.as_deref().map(short).unwrap_or("-")),
        SyncState::Stale => format!(
            "STALE {} -> {}",
            t.acked_version.as_deref().map(short).unwrap_or("-"),
            t.current_version.as_deref().map(short).unwrap_or("?")
        ),
        SyncState::Nacked => format!(
            "NACKED {}",
            t.nack
                .as_ref()
                .map(|n| short(&n.version))
                .or(t.sent_version.as_deref().map(short))
                .unwrap_or("-")
        ),
        SyncState::NotSent => "NOT SENT".into(),
    }
}

fn short(v: &str) -> &str {
    match v.char_indices().nth(8) {
        Some((i, _)) => &v[..i],
        None => v,
    }
}

/// A duration in seconds as `45s`, `3m07s`, `2h05m`, `3d04h`.
pub(crate) fn age(secs: f64) -> String {
    let s = if secs.is_finite() && secs > 0.0 { secs as u64 } else { 0 };
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Text from the network, made safe for a terminal: control characters become `?`.
fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// Left-aligned columns, two spaces apart, no trailing spaces.
fn align(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            line.push_str(c);
            if i + 1 < r.len() {
                let pad = widths[i] - c.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::admin::view::{GroupTypeView, GroupView, NackView, NodeView, StreamView};

    fn ty(
        state: SyncState,
        sent: Option<&str>,
        acked: Option<&str>,
        current: &str,
        ack_at: Option<f64>,
    ) -> NodeTypeView {
        NodeTypeView {
            state,
            subscribed: state != SyncState::NotSent,
            wildcard: false,
            names: 0,
            sent_version: sent.map(String::from),
            acked_version: acked.map(String::from),
            current_version: Some(current.into()),
            last_sent_at: None,
            last_ack_at: ack_at,
            nack: None,
        }
    }

    fn node(id: &str, types: [NodeTypeView; 4]) -> NodeView {
        NodeView {
            node_id: id.into(),
            node_cluster: "voltha".into(),
            group: Some("nbi".into()),
            streams: vec![StreamView {
                id: 1,
                api: "sotw".into(),
                service: "ads".into(),
                connected_at: 0.0,
            }],
            types: TYPES.iter().map(|t| t.to_string()).zip(types).collect(),
        }
    }

    fn view(nodes: Vec<NodeView>) -> StatusView {
        let types: BTreeMap<String, GroupTypeView> = TYPES
            .iter()
            .map(|t| {
                (
                    t.to_string(),
                    GroupTypeView {
                        version: format!("{t}00000000current"),
                        resources: 2,
                    },
                )
            })
            .collect();
        StatusView {
            generated_at: 1000.0,
            ready: true,
            generation: Some(7),
            default_group: Some("nbi".into()),
            groups: vec![GroupView {
                name: "nbi".into(),
                version: "g".into(),
                types,
            }],
            nodes,
            pushes: vec![],
            nacks: vec![],
            sources: vec![],
            endpoints: vec![],
            latency: vec![],
            config: None,
        }
    }

    #[test]
    fn each_state_is_shown_with_its_versions_and_the_columns_line_up() {
        let cur = "aaaaaaaa11111111";
        let mut nacked = ty(SyncState::Nacked, Some("bbbbbbbb22222222"), Some(cur), cur, Some(990.0));
        nacked.nack = Some(NackView {
            node_id: "olt-2".into(),
            node_cluster: "voltha".into(),
            ty: "eds".into(),
            version: "bbbbbbbb22222222".into(),
            error: "bad endpoint\nsecond line".into(),
            at: 995.0,
        });
        let v = view(vec![
            node(
                "olt-1",
                [
                    ty(SyncState::Synced, Some(cur), Some(cur), cur, Some(997.0)),
                    ty(SyncState::Synced, Some(cur), Some(cur), cur, Some(998.0)),
                    ty(SyncState::Stale, Some("cccccccc"), Some("dddddddd99"), cur, Some(400.0)),
                    ty(SyncState::NotSent, None, None, cur, None),
                ],
            ),
            node(
                "a-much-longer-node-id",
                [
                    ty(SyncState::Synced, Some(cur), Some(cur), cur, Some(100.0)),
                    nacked,
                    ty(SyncState::Stale, Some(cur), None, cur, None),
                    ty(SyncState::NotSent, None, None, cur, None),
                ],
            ),
            node(
                "never",
                std::array::from_fn(|_| ty(SyncState::NotSent, None, None, cur, None)),
            ),
        ]);
        let out = render(&v);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "NODE                   CLUSTER  GROUP  CDS              EDS              LDS                         RDS       LAST ACK"
        );
        assert_eq!(
            lines[1],
            "olt-1                  voltha   nbi    SYNCED aaaaaaaa  SYNCED aaaaaaaa  STALE dddddddd -> aaaaaaaa  NOT SENT  2s ago"
        );
        assert_eq!(
            lines[2],
            "a-much-longer-node-id  voltha   nbi    SYNCED aaaaaaaa  NACKED bbbbbbbb  STALE - -> aaaaaaaa         NOT SENT  10s ago"
        );
        assert_eq!(
            lines[3],
            "never                  voltha   nbi    NOT SENT         NOT SENT         NOT SENT                    NOT SENT  never"
        );
        assert!(out.contains("snapshot generation 7, default group nbi\n"), "{out}");
        assert!(
            out.contains("\nnbi    cds00000 (2)  eds00000 (2)  lds00000 (2)  rds00000 (2)\n"),
            "{out}"
        );
        assert!(
            out.ends_with("\nNACKED:\n  a-much-longer-node-id eds bbbbbbbb: bad endpoint?second line\n"),
            "{out}"
        );
    }

    #[test]
    fn no_envoy_and_no_snapshot_are_said_plainly() {
        let mut v = view(vec![]);
        v.generation = None;
        v.groups.clear();
        assert_eq!(render(&v), "no Envoy is connected\n\nno snapshot has been built yet\n");
    }

    #[test]
    fn ages_and_terminal_safety() {
        assert_eq!(age(-3.0), "0s");
        assert_eq!(age(f64::NAN), "0s");
        assert_eq!(age(59.9), "59s");
        assert_eq!(age(187.0), "3m07s");
        assert_eq!(age(7500.0), "2h05m");
        assert_eq!(age(3.0 * 86400.0 + 4.0 * 3600.0), "3d04h");
        assert_eq!(clean("a\u{1b}[31mb"), "a?[31mb");
        assert_eq!(short("ab"), "ab");
        assert_eq!(short("0123456789"), "01234567");
    }

    #[test]
    fn a_reload_that_was_not_applied_is_listed_with_its_errors_and_an_applied_one_is_not() {
        let mut v = view(vec![]);
        let attempt = |result: &str| crate::reload::ConfigStatus {
            path: Some("/etc/voltha-xds/voltha-xds.yaml".into()),
            applied_at: 900.0,
            reloads_ok: 0,
            reloads_invalid: 0,
            reloads_refused: 1,
            last_reload: Some(crate::reload::ReloadAttempt {
                at: 970.0,
                trigger: "file_change".into(),
                result: result.into(),
                errors: vec!["server.max_streams cannot change\u{1b}[31m".into()],
                changes: vec![],
            }),
        };
        v.config = Some(attempt("refused"));
        let out = render(&v);
        assert!(
            out.ends_with(
                "\nCONFIGURATION RELOAD REFUSED (30s ago, file_change); the running configuration is kept:\n  \
                 server.max_streams cannot change?[31m\n"
            ),
            "{out}"
        );
        v.config = Some(attempt("ok"));
        assert!(!render(&v).contains("CONFIGURATION"));
    }
}
