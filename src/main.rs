//! The `voltha-xds` command line: parses arguments and calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::json;
use voltha_xds::config::Config;

/// mimalloc returns freed memory to the system promptly (with [`ALLOCATOR_ENV`]); with glibc's
/// allocator the transient buffers of a push to thousands of streams stay resident long after
/// they are freed. Wrapped in a counter of live heap bytes (`voltha_xds_heap_bytes`): one
/// relaxed atomic add per allocation.
#[global_allocator]
static ALLOCATOR: cap::Cap<mimalloc::MiMalloc> = cap::Cap::new(mimalloc::MiMalloc, usize::MAX);

/// mimalloc's settings for `serve`. mimalloc reads them from the environment when the process
/// loads, before `main`, so `serve` restarts itself with them ([`with_allocator_env`]).
/// - `MIMALLOC_PURGE_DELAY=0`: memory freed back to mimalloc's arenas goes back to the system
///   at once. With the default (1 s), a purge happens only when later allocations find the
///   delay expired, so a server that goes quiet after a burst keeps the burst's pages.
/// - `MIMALLOC_ALLOW_THP=0`: no transparent huge pages for the heap; with them a few live bytes
///   keep a whole 2 MiB page resident.
///
/// An operator's own value of either variable is kept. `docs/reliability.md` and
/// `docs/benchmarks.md` have the figures.
const ALLOCATOR_ENV: [(&str, &str); 2] = [("MIMALLOC_PURGE_DELAY", "0"), ("MIMALLOC_ALLOW_THP", "0")];

/// Restarts this process (same pid, arguments and environment) with the [`ALLOCATOR_ENV`]
/// variables that are not set. Returns only when there is nothing to do, or when the restart
/// failed (said on stderr): the server then runs with mimalloc's defaults.
fn with_allocator_env() {
    let missing: Vec<(&str, &str)> = ALLOCATOR_ENV
        .into_iter()
        .filter(|(k, _)| std::env::var_os(k).is_none())
        .collect();
    if missing.is_empty() {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_default();
        // The running executable itself, even if its file has been replaced since.
        let err = std::process::Command::new("/proc/self/exe")
            .arg0(arg0)
            .args(args)
            .envs(missing.iter().copied())
            .exec();
        eprintln!("voltha-xds: cannot restart with {missing:?} ({err}); the allocator keeps its defaults");
    }
}

fn heap_bytes() -> usize {
    ALLOCATOR.allocated()
}

#[derive(Parser)]
#[command(name = "voltha-xds", version = voltha_xds::build_info::LONG_VERSION, about = "Envoy xDS control plane for VOLTHA")]
struct Cli {
    /// Log format: `human` (readable lines) or `json` (one object per line), on stderr.
    // Checked after parsing (`log_options`), not by clap: clap checks a global flag's variable
    // at each subcommand too, so a bad variable would be refused even under a good flag.
    #[arg(long, global = true, default_value = "human", env = "VOLTHA_XDS_LOG_FORMAT")]
    log_format: String,
    /// Log filter: a level (trace, debug, info, warn, error, off), `target=level` directives, or
    /// a comma-separated list of those, such as `info,xds_engine::push=debug`; anything else is
    /// refused. RUST_LOG, when set, takes precedence.
    #[arg(long, global = true, default_value = "info", env = "VOLTHA_XDS_LOG_LEVEL")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

/// The levels `--log-level` takes, alone or after `target=`.
const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks a `--log-level` value, so that a typo is refused at start: a comma-separated list of
/// levels ([`LOG_LEVELS`], any case) and `target=level` directives. Anything else (`warning`,
/// `inf`) is refused: tracing would read a bare word as a target name enabled at every level.
/// Returns the filter with blanks around the commas removed.
fn parse_log_level(s: &str) -> Result<String, String> {
    let is_level = |l: &str| LOG_LEVELS.iter().any(|k| k.eq_ignore_ascii_case(l));
    let parts: Vec<&str> = s.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return Err(format!("empty; give a level ({})", LOG_LEVELS.join(", ")));
    }
    for part in &parts {
        let ok = match part.split_once('=') {
            None => is_level(part),
            Some((target, level)) => {
                !target.is_empty()
                    && target
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-' | '.'))
                    && is_level(level)
            }
        };
        if !ok {
            return Err(format!(
                "{part:?} is not a log level ({}) or a target=level directive",
                LOG_LEVELS.join(", ")
            ));
        }
    }
    let filter = parts.join(",");
    tracing_subscriber::EnvFilter::builder()
        .parse(&filter)
        .map(|_| filter)
        .map_err(|e| format!("not a log level or filter directive: {e}"))
}

/// A `serve` listen address, with an error that names the flag and its variable (clap's own
/// names only the flag, whichever of the two the value came from).
fn listen_addr(v: &str, flag: &str, var: &str) -> Result<SocketAddr, String> {
    v.parse()
        .map_err(|e| format!("{e}: give ip:port, e.g. 127.0.0.1:18080 (the value of {flag} or {var})"))
}

#[derive(Copy, Clone, Debug, PartialEq)]
enum LogFormat {
    Human,
    Json,
}

/// The checked `--log-format` and `--log-level`, or clap's usage error (exit status 2).
fn log_options(cli: &Cli) -> Result<(LogFormat, String), clap::Error> {
    use clap::CommandFactory;
    let invalid = |flag: &str, var: &str, value: &str, why: &str| {
        Cli::command().error(
            clap::error::ErrorKind::InvalidValue,
            format!("invalid value {value:?} for '--{flag}' (or {var}): {why}"),
        )
    };
    let format = match cli.log_format.as_str() {
        "human" => LogFormat::Human,
        "json" => LogFormat::Json,
        other => {
            return Err(invalid(
                "log-format",
                "VOLTHA_XDS_LOG_FORMAT",
                other,
                "the formats are human and json",
            ))
        }
    };
    let level = parse_log_level(&cli.log_level)
        .map_err(|e| invalid("log-level", "VOLTHA_XDS_LOG_LEVEL", &cli.log_level, &e))?;
    Ok((format, level))
}

#[derive(Subcommand)]
enum Command {
    /// Run the xDS server (the embedded VOLTHA profile unless --config is given).
    Serve {
        /// The configuration file (YAML) [default: the embedded VOLTHA profile].
        #[arg(long, env = "VOLTHA_XDS_CONFIG")]
        config: Option<PathBuf>,
        /// xDS gRPC address [default: server.xds_listen, 0.0.0.0:18000].
        #[arg(long, env = "VOLTHA_XDS_XDS_LISTEN", value_parser = |v: &str| listen_addr(v, "--xds-listen", "VOLTHA_XDS_XDS_LISTEN"))]
        xds_listen: Option<SocketAddr>,
        /// Admin HTTP address: /healthz, /readyz, /metrics [default: server.admin_listen,
        /// 127.0.0.1:18080].
        #[arg(long, env = "VOLTHA_XDS_ADMIN_LISTEN", value_parser = |v: &str| listen_addr(v, "--admin-listen", "VOLTHA_XDS_ADMIN_LISTEN"))]
        admin_listen: Option<SocketAddr>,
        /// Admin debug HTTP address: /debug/*, the status page, and the admin routes; keep it
        /// on loopback [default: server.admin_debug_listen, 127.0.0.1:18081].
        #[arg(long, env = "VOLTHA_XDS_ADMIN_DEBUG_LISTEN", value_parser = |v: &str| listen_addr(v, "--admin-debug-listen", "VOLTHA_XDS_ADMIN_DEBUG_LISTEN"))]
        admin_debug_listen: Option<SocketAddr>,
    },
    /// Check a configuration; print a summary or every error.
    Validate {
        /// The configuration file (YAML) to check.
        #[arg(long)]
        config: PathBuf,
    },
    /// Print every resource that would be served, as Envoy JSON.
    Render {
        /// The configuration file (YAML) [default: the embedded VOLTHA profile].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Render the group an Envoy with this node.cluster gets [default: every group].
        #[arg(long)]
        node_cluster: Option<String>,
    },
    /// Print an Envoy bootstrap (YAML) that takes its configuration from this server.
    Bootstrap {
        /// The Envoy's node.id.
        #[arg(long)]
        node_id: String,
        /// The Envoy's node.cluster, which selects its group.
        #[arg(long)]
        node_cluster: String,
        /// The xDS server, host:port.
        #[arg(long)]
        xds: String,
        /// The port of Envoy's admin listener.
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
        /// The address Envoy's admin listener binds.
        #[arg(long, default_value = "127.0.0.1")]
        admin_address: String,
        /// Use Delta xDS instead of State of the World.
        #[arg(long)]
        delta: bool,
        /// Connect over TLS, verifying the server's certificate with this CA file and its name
        /// or IP against the --xds host (Envoy's TLS transport socket, or with --grpc gRPC's
        /// `tls` channel credentials).
        #[arg(long)]
        tls_ca: Option<String>,
        /// Client certificate for mutual TLS (with --tls-key and --tls-ca).
        #[arg(long, requires_all = ["tls_key", "tls_ca"])]
        tls_cert: Option<String>,
        /// Private key of --tls-cert.
        #[arg(long, requires_all = ["tls_cert", "tls_ca"])]
        tls_key: Option<String>,
        /// Print a proxyless gRPC client's bootstrap (JSON, for GRPC_XDS_BOOTSTRAP) instead.
        #[arg(long)]
        grpc: bool,
    },
    /// Show each connected Envoy's sync state per type (SYNCED, STALE, NACKED, NOT SENT),
    /// read from a running server's admin debug API.
    Status {
        /// The admin debug API's base URL (server.admin_debug_listen).
        #[arg(long, default_value = "http://127.0.0.1:18081")]
        admin: String,
        /// Print the admin's JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
}

/// Starts the log subscriber. The filter is `RUST_LOG` when it is set (and not empty), else
/// `--log-level`; a `RUST_LOG` that does not parse is reported and `--log-level` is used.
fn init_logs(format: LogFormat, level: &str) {
    let from_env = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    let mut bad_env = None;
    let filter = match from_env
        .as_deref()
        .map(|v| tracing_subscriber::EnvFilter::builder().parse(v))
    {
        Some(Ok(f)) => f,
        other => {
            if let Some(Err(e)) = other {
                bad_env = Some(e.to_string());
            }
            tracing_subscriber::EnvFilter::builder()
                .parse(level)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        }
    };
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => b.init(),
        LogFormat::Json => b.json().init(),
    }
    if let Some(e) = bad_env {
        tracing::warn!(error = %e, log_level = level, "RUST_LOG is not a valid filter; using --log-level");
    }
}

fn load(config: &Option<PathBuf>) -> Result<Config, String> {
    match config {
        Some(p) => Config::load(p).map_err(|e| e.to_string()),
        None => Config::embedded_default().map_err(|e| format!("embedded default: {e}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (log_format, log_level) = log_options(&cli).unwrap_or_else(|e| e.exit());
    if matches!(cli.command, Command::Serve { .. }) {
        with_allocator_env();
    }
    match run(cli, log_format, &log_level) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voltha-xds: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, log_format: LogFormat, log_level: &str) -> Result<(), String> {
    match cli.command {
        Command::Serve {
            config,
            xds_listen,
            admin_listen,
            admin_debug_listen,
        } => {
            init_logs(log_format, log_level);
            // The text parsed is what `serve` records as applied: a change made after this read
            // is a change to reload, whenever the file is next read.
            let (config, config_file) = match config {
                Some(p) => {
                    let (c, text) = Config::load_text(&p).map_err(|e| e.to_string())?;
                    (c, Some((p, text.into_bytes())))
                }
                None => (load(&None)?, None),
            };
            let xds = match xds_listen {
                Some(a) => a,
                None => config.server.xds_listen.addr(),
            };
            let admin = match admin_listen {
                Some(a) => a,
                None => config.server.admin_listen.addr(),
            };
            let admin_debug = match admin_debug_listen {
                Some(a) => a,
                None => config.server.admin_debug_listen.addr(),
            };
            let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            rt.block_on(voltha_xds::serve(
                config,
                config_file,
                xds,
                admin,
                admin_debug,
                Some(heap_bytes),
            ))
            .map_err(|e| format!("{e:#}"))
        }
        Command::Validate { config } => {
            let c = Config::load(&config).map_err(|e| e.to_string())?;
            // The xDS TLS files are loaded as `serve` would load them.
            if let Some(tls) = &c.server.tls {
                voltha_xds::xds::listen::check(&voltha_xds::config::xds_tls(tls))
                    .map_err(|e| format!("{}: {e}", config.display()))?;
            }
            print!("{} is valid\n{}", config.display(), c.summary());
            Ok(())
        }
        Command::Render { config, node_cluster } => {
            let config = load(&config)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let model = rt.block_on(voltha_xds::sources::read_once(&config))?;
            let pick = node_cluster.map(|nc| {
                if config.groups.iter().any(|g| g.name == nc) {
                    nc
                } else {
                    config.default_group.clone()
                }
            });
            // Built as `serve` builds it, so the versions are the ones `serve` hands out.
            let cache = voltha_xds::xds::cache::Cache::new();
            voltha_xds::reconcile::build_snapshot(&config, &model, &cache, std::time::Instant::now())
                .map_err(|e| e.to_string())?;
            let snapshot = cache.current().ok_or("no snapshot was built")?;
            let doc = match pick {
                Some(p) => {
                    let g = snapshot.groups.get(&p).ok_or_else(|| format!("no group {p:?}"))?;
                    voltha_xds::render::config_dump(g)?
                }
                None => {
                    let mut out = serde_json::Map::new();
                    for (name, g) in &snapshot.groups {
                        out.insert(name.clone(), voltha_xds::render::config_dump(g)?);
                    }
                    json!({ "groups": out })
                }
            };
            println!("{}", serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?);
            Ok(())
        }
        Command::Bootstrap {
            node_id,
            node_cluster,
            xds,
            admin_port,
            admin_address,
            delta,
            tls_ca,
            tls_cert,
            tls_key,
            grpc,
        } => {
            let make = if grpc {
                voltha_xds::bootstrap::grpc_bootstrap
            } else {
                voltha_xds::bootstrap::bootstrap
            };
            let y = make(&voltha_xds::bootstrap::BootstrapOptions {
                node_id,
                node_cluster,
                xds,
                admin_port,
                admin_address,
                delta,
                tls: tls_ca.map(|ca| voltha_xds::bootstrap::BootstrapTls {
                    ca,
                    client: tls_cert.zip(tls_key),
                }),
            })?;
            print!("{y}");
            Ok(())
        }
        Command::Status { admin, json } => status(&admin, json),
    }
}

/// `voltha-xds status`: reads `GET /debug/status` from the debug listener and prints the table.
fn status(admin: &str, json: bool) -> Result<(), String> {
    let url = format!("{}/debug/status", admin.trim_end_matches('/'));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let body = rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        let r = client.get(&url).send().await.map_err(|e| {
            format!(
                "cannot reach the admin debug API at {admin} ({url}): {e}; is voltha-xds serving \
                 there? (--admin URL, the address of server.admin_debug_listen)"
            )
        })?;
        let code = r.status();
        let text = r.text().await.map_err(|e| format!("{url}: {e}"))?;
        if code == reqwest::StatusCode::NOT_FOUND {
            return Err(format!(
                "{url} answered 404: {admin} is not an admin debug API; give --admin the address \
                 of server.admin_debug_listen (127.0.0.1:18081 by default), not of \
                 server.admin_listen"
            ));
        }
        if !code.is_success() {
            return Err(format!("{url} answered {code}: {}", text.trim()));
        }
        Ok(text)
    })?;
    let view: voltha_xds::admin::view::StatusView =
        serde_json::from_str(&body).map_err(|e| format!("{url} did not answer a status document: {e}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view).map_err(|e| e.to_string())?);
    } else {
        print!("{}", voltha_xds::admin::table::render(&view));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every flag of every subcommand says what it does in `--help`.
    #[test]
    fn every_flag_has_help_text() {
        let cli = Cli::command();
        let mut missing = Vec::new();
        for cmd in std::iter::once(&cli).chain(cli.get_subcommands()) {
            for arg in cmd.get_arguments() {
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{} --{}", cmd.get_name(), arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "flags without help text: {missing:?}");
    }

    /// Every `serve` flag (and the global ones) can come from a `VOLTHA_XDS_*` variable named
    /// after the flag.
    #[test]
    fn every_serve_flag_has_an_environment_variable() {
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").expect("serve");
        for arg in serve.get_arguments().filter(|a| a.get_long().is_some()) {
            let long = arg.get_long().unwrap_or_default();
            if long == "help" {
                continue;
            }
            let want = format!("VOLTHA_XDS_{}", long.to_uppercase().replace('-', "_"));
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(want.as_str()),
                "serve --{long}"
            );
        }
    }

    #[test]
    fn log_level_accepts_levels_and_directives_and_refuses_typos() {
        for ok in ["info", "debug", "warn,xds_engine::push=debug", "voltha_xds=trace"] {
            assert_eq!(parse_log_level(ok).as_deref(), Ok(ok));
        }
        assert!(parse_log_level("inf o=[").is_err());
        for ok in [
            "INFO",
            "off",
            "info,",
            "h2=warn, voltha_xds::xds=debug",
            "voltha-xds=error",
        ] {
            assert!(parse_log_level(ok).is_ok(), "{ok:?}");
        }
        // Mistyped levels that tracing would take as a target enabled at every level.
        for typo in [
            "warning",
            "inf",
            "information",
            "",
            " , ",
            "voltha_xds=warning",
            "=info",
            "info,dbug",
        ] {
            let e = parse_log_level(typo).err();
            assert!(e.is_some(), "{typo:?} accepted");
        }
        assert!(parse_log_level("warning")
            .err()
            .is_some_and(|e| e.contains("\"warning\" is not a log level")));
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from(args.iter().copied()).expect("parses");
            log_options(&cli).map_err(|e| e.to_string())
        };
        let err = parse(&["voltha-xds", "--log-level", "=[", "validate", "--config", "x"]).err();
        assert!(err.as_deref().is_some_and(|e| e.contains("'--log-level'")), "{err:?}");
        let err = parse(&["voltha-xds", "--log-level", "warning", "validate", "--config", "x"]).err();
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("'--log-level'") && e.contains("VOLTHA_XDS_LOG_LEVEL")),
            "{err:?}"
        );
        let err = parse(&["voltha-xds", "validate", "--log-format", "xml", "--config", "x"]).err();
        assert!(err.as_deref().is_some_and(|e| e.contains("'--log-format'")), "{err:?}");
        assert_eq!(
            parse(&["voltha-xds", "serve", "--log-format", "json", "--log-level", "debug"]),
            Ok((LogFormat::Json, "debug".to_string()))
        );
    }
}
