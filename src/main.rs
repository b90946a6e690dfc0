//! The `voltha-xds` command line: parses arguments and calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
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
#[command(name = "voltha-xds", version, about = "Envoy xDS control plane for VOLTHA")]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "human")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the xDS server (the embedded VOLTHA profile unless --config is given).
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
        /// xDS gRPC address [default: server.xds_listen, 0.0.0.0:18000].
        #[arg(long)]
        xds_listen: Option<SocketAddr>,
        /// Admin HTTP address: /healthz, /readyz, /metrics [default: server.admin_listen,
        /// 127.0.0.1:18080].
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// Admin debug HTTP address: /debug/*, the status page, and the admin routes; keep it
        /// on loopback [default: server.admin_debug_listen, 127.0.0.1:18081].
        #[arg(long)]
        admin_debug_listen: Option<SocketAddr>,
    },
    /// Check a configuration; print a summary or every error.
    Validate {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print every resource that would be served, as Envoy JSON.
    Render {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Render the group an Envoy with this node.cluster gets [default: every group].
        #[arg(long)]
        node_cluster: Option<String>,
    },
    /// Print an Envoy bootstrap (YAML) that takes its configuration from this server.
    Bootstrap {
        #[arg(long)]
        node_id: String,
        #[arg(long)]
        node_cluster: String,
        /// The xDS server, host:port.
        #[arg(long)]
        xds: String,
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
        /// The address Envoy's admin listener binds.
        #[arg(long, default_value = "127.0.0.1")]
        admin_address: String,
        /// Use Delta xDS instead of State of the World.
        #[arg(long)]
        delta: bool,
        /// Connect over TLS, verifying the server's certificate with this CA file (as Envoy
        /// reads it) and its name or IP against the --xds host.
        #[arg(long)]
        tls_ca: Option<String>,
        /// Client certificate for mutual TLS (with --tls-key and --tls-ca).
        #[arg(long, requires_all = ["tls_key", "tls_ca"])]
        tls_cert: Option<String>,
        /// Private key of --tls-cert.
        #[arg(long, requires_all = ["tls_cert", "tls_ca"])]
        tls_key: Option<String>,
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

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => b.init(),
        LogFormat::Json => b.json().init(),
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
    if matches!(cli.command, Command::Serve { .. }) {
        with_allocator_env();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voltha-xds: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve {
            config,
            xds_listen,
            admin_listen,
            admin_debug_listen,
        } => {
            init_logs(cli.log_format);
            let config = load(&config)?;
            let xds = match xds_listen {
                Some(a) => a,
                None => config
                    .server
                    .xds_listen
                    .parse()
                    .map_err(|e| format!("server.xds_listen: {e}"))?,
            };
            let admin = match admin_listen {
                Some(a) => a,
                None => config
                    .server
                    .admin_listen
                    .parse()
                    .map_err(|e| format!("server.admin_listen: {e}"))?,
            };
            let admin_debug = match admin_debug_listen {
                Some(a) => a,
                None => config
                    .server
                    .admin_debug_listen
                    .parse()
                    .map_err(|e| format!("server.admin_debug_listen: {e}"))?,
            };
            let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            rt.block_on(voltha_xds::serve(config, xds, admin, admin_debug, Some(heap_bytes)))
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
        } => {
            let y = voltha_xds::bootstrap::bootstrap(&voltha_xds::bootstrap::BootstrapOptions {
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
