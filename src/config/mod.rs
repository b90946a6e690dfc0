//! Configuration: typed structs read from YAML, validated before anything starts.
//!
//! Parsing and validation work on a string (`Config::from_yaml`), with no files or environment,
//! so every error message is a unit test. Every key is documented in `docs/configuration.md`.

pub(crate) mod address;
mod duration;
mod grpc;
mod kubernetes;
mod limits;
mod validate;
pub(crate) mod yaml;

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub(crate) use address::{IpPort, Parsed};
pub(crate) use duration::{Dur, Timeout};
pub(crate) use grpc::{GrpcServiceConfig, RouteConfigMode};
pub(crate) use kubernetes::{KubernetesSource, PodPort, Readiness};
use limits::MAX_CONFIG_BYTES;
pub use validate::is_host;
pub(crate) use validate::same_port;
pub(crate) use validate::{canonical_host, parse_host_port};

/// The configuration `serve` runs when no `--config` is given: `config/voltha-xds.yaml`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/voltha-xds.yaml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub(crate) debounce: DebounceConfig,
    /// The node group of an Envoy whose `node.cluster` names no group.
    pub default_group: String,
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
    #[serde(default)]
    pub(crate) listeners: Vec<ListenerConfig>,
    /// Services for proxyless gRPC clients (`xds:///<name>`), see `config/grpc.rs`.
    #[serde(default)]
    pub(crate) grpc_services: Vec<GrpcServiceConfig>,
    pub groups: Vec<GroupConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_xds_listen")]
    pub xds_listen: IpPort,
    #[serde(default = "default_admin_listen")]
    pub admin_listen: IpPort,
    /// The debug API (`/debug/*`, the status page): every resource and every client.
    #[serde(default = "default_admin_debug_listen")]
    pub admin_debug_listen: IpPort,
    /// The most resource names one stream may subscribe to, per type.
    #[serde(default = "default_max_names")]
    pub(crate) max_names_per_type: usize,
    /// The most xDS streams open at once, over every connection.
    #[serde(default = "default_max_streams")]
    pub max_streams: usize,
    /// The most client connections open at once on the xDS port.
    #[serde(default = "default_max_connections")]
    pub(crate) max_connections: usize,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: the most streams on one connection.
    #[serde(default = "default_max_streams_per_connection")]
    pub(crate) max_streams_per_connection: u32,
    /// The largest gRPC request message accepted, in bytes.
    #[serde(default = "default_max_request_bytes")]
    pub(crate) max_request_bytes: usize,
    /// HTTP/2 PING interval on idle connections; `0s` turns keepalive off.
    #[serde(default = "default_keepalive_interval")]
    pub(crate) keepalive_interval: Dur,
    /// A connection whose PING is not answered within this time is closed.
    #[serde(default = "default_keepalive_timeout")]
    pub(crate) keepalive_timeout: Dur,
    /// On SIGTERM/SIGINT: how long open streams and responses in flight get to finish.
    #[serde(default = "default_shutdown_grace")]
    pub(crate) shutdown_grace: Dur,
    /// TLS (and, with `client_ca_file`, mutual TLS) on the xDS port.
    #[serde(default)]
    pub tls: Option<XdsTlsConfig>,
    /// The bounds of CSDS (client status) requests on the xDS port.
    #[serde(default)]
    pub csds: CsdsConfig,
    /// How often the `--config` file is checked for a change to reload; `0s` turns the check
    /// off (SIGHUP still reloads). See `reload`.
    #[serde(default = "default_config_reload_interval")]
    pub config_reload_interval: Dur,
}

fn default_config_reload_interval() -> Dur {
    Dur(Duration::from_secs(1))
}

/// CSDS bounds: how many answers are built or sent at once, how large one may be, and how
/// often one `StreamClientStatus` stream may ask.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsdsConfig {
    /// CSDS answers being built or sent at once, over every client.
    #[serde(default = "default_csds_concurrent")]
    pub max_concurrent_requests: usize,
    /// The largest CSDS response message, in bytes.
    #[serde(default = "default_csds_response_bytes")]
    pub max_response_bytes: usize,
    /// Requests one `StreamClientStatus` stream may make per second, on average...
    #[serde(default = "default_csds_rate")]
    pub(crate) stream_requests_per_second: f64,
    /// ...and at once after a quiet period (the token bucket's size).
    #[serde(default = "default_csds_burst")]
    pub(crate) stream_burst: u32,
}

fn default_csds_concurrent() -> usize {
    4
}
fn default_csds_response_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_csds_rate() -> f64 {
    1.0
}
fn default_csds_burst() -> u32 {
    5
}

impl Default for CsdsConfig {
    fn default() -> Self {
        CsdsConfig {
            max_concurrent_requests: default_csds_concurrent(),
            max_response_bytes: default_csds_response_bytes(),
            stream_requests_per_second: default_csds_rate(),
            stream_burst: default_csds_burst(),
        }
    }
}

/// TLS on the xDS port. The files are re-read when they change; open streams keep going.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdsTlsConfig {
    /// PEM certificate chain presented to Envoy.
    pub(crate) cert_file: String,
    /// PEM private key of `cert_file`.
    pub(crate) key_file: String,
    /// PEM CA bundle; when set, every client must present a certificate it signed (mTLS).
    #[serde(default)]
    pub(crate) client_ca_file: Option<String>,
    /// How often the files are checked for changes.
    #[serde(default = "default_tls_reload")]
    pub(crate) reload_interval: Dur,
}

fn default_max_streams() -> usize {
    100_000
}
fn default_max_connections() -> usize {
    50_000
}
fn default_max_streams_per_connection() -> u32 {
    1_000
}
fn default_max_request_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_keepalive_interval() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_keepalive_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_shutdown_grace() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_tls_reload() -> Dur {
    Dur(Duration::from_secs(10))
}

fn default_xds_listen() -> IpPort {
    "0.0.0.0:18000".into()
}
fn default_admin_listen() -> IpPort {
    "127.0.0.1:18080".into()
}
fn default_admin_debug_listen() -> IpPort {
    "127.0.0.1:18081".into()
}
fn default_max_names() -> usize {
    100_000
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            xds_listen: default_xds_listen(),
            admin_listen: default_admin_listen(),
            admin_debug_listen: default_admin_debug_listen(),
            max_names_per_type: default_max_names(),
            max_streams: default_max_streams(),
            max_connections: default_max_connections(),
            max_streams_per_connection: default_max_streams_per_connection(),
            max_request_bytes: default_max_request_bytes(),
            keepalive_interval: default_keepalive_interval(),
            keepalive_timeout: default_keepalive_timeout(),
            shutdown_grace: default_shutdown_grace(),
            tls: None,
            csds: CsdsConfig::default(),
            config_reload_interval: default_config_reload_interval(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DebounceConfig {
    /// A snapshot is built once the inputs have been quiet this long...
    #[serde(default = "default_quiet")]
    pub(crate) quiet: Dur,
    /// ...or once this long has passed since the first unprocessed change.
    #[serde(default = "default_max_delay")]
    pub(crate) max_delay: Dur,
}

fn default_quiet() -> Dur {
    Dur(Duration::from_millis(50))
}
fn default_max_delay() -> Dur {
    Dur(Duration::from_secs(1))
}

impl Default for DebounceConfig {
    fn default() -> Self {
        DebounceConfig {
            quiet: default_quiet(),
            max_delay: default_max_delay(),
        }
    }
}

/// An input. Each source has a unique name that clusters refer to.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// A file, re-read when it changes (for development, and tests).
    File {
        name: String,
        path: PathBuf,
        #[serde(default)]
        format: FileFormat,
        #[serde(default = "default_poll")]
        poll_interval: Dur,
        /// The largest file accepted, in bytes; a larger one is an error (`too_large`).
        #[serde(default = "default_max_value_bytes")]
        max_value_bytes: usize,
        /// Poll at once when the file's directory reports a change (inotify), beside the polls.
        #[serde(default = "default_true")]
        watch: bool,
    },
    /// An etcd v3 key, read and then watched from the revision read.
    Etcd(EtcdSource),
    /// A Consul KV key, followed with blocking queries.
    Consul(ConsulSource),
    /// Pods watched through the Kubernetes API.
    Kubernetes(KubernetesSource),
}

fn default_true() -> bool {
    true
}

fn default_poll() -> Dur {
    Dur(Duration::from_millis(250))
}

/// The largest source value accepted (a file, a KV value): 4 MiB. A VOLTHA assignment is a few
/// hundred bytes.
pub(crate) fn default_max_value_bytes() -> usize {
    4 << 20
}

/// The key VOLTHA's leader writes the core assignment to.
pub(crate) const ASSIGNMENT_KEY: &str = "service/voltha/data/core/assignment";

fn default_assignment_key() -> String {
    ASSIGNMENT_KEY.to_string()
}

/// An etcd v3 source (`type: etcd`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSource {
    pub(crate) name: String,
    /// `host:port`, `http://host:port` or `https://host:port`; empty: `ETCDCTL_ENDPOINTS`
    /// (comma-separated), else `127.0.0.1:2379`.
    #[serde(default)]
    pub(crate) endpoints: Vec<String>,
    #[serde(default = "default_assignment_key")]
    pub(crate) key: String,
    #[serde(default)]
    pub(crate) format: FileFormat,
    /// etcd user; with `password` or `password_file`. Empty: `ETCDCTL_USER` (`user:password`).
    #[serde(default)]
    pub(crate) username: Option<String>,
    #[serde(default)]
    pub(crate) password: Option<String>,
    #[serde(default)]
    pub(crate) password_file: Option<PathBuf>,
    /// CA bundle to verify the server (turns TLS on); else `ETCDCTL_CACERT`.
    #[serde(default)]
    pub(crate) ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS; else `ETCDCTL_CERT` / `ETCDCTL_KEY`.
    #[serde(default)]
    pub(crate) cert_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) key_file: Option<PathBuf>,
    #[serde(default = "default_dial_timeout")]
    pub(crate) dial_timeout: Dur,
    #[serde(default)]
    pub(crate) backoff: BackoffConfig,
    /// The largest value accepted for the key, in bytes; a larger one is an error of kind
    /// `too_large` and the last good state is kept.
    #[serde(default = "default_max_value_bytes")]
    pub(crate) max_value_bytes: usize,
    /// While etcd is out of reach: how often it is probed (a connection and a read of the
    /// key), so a recovery is followed at once rather than after the backoff's wait.
    #[serde(default = "default_etcd_probe_interval")]
    pub(crate) probe_interval: Dur,
}

fn default_etcd_probe_interval() -> Dur {
    Dur(Duration::from_millis(500))
}

fn default_dial_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}

/// A Consul KV source (`type: consul`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsulSource {
    pub name: String,
    /// `host:port` or `http(s)://host:port`; else `CONSUL_HTTP_ADDR`, else `127.0.0.1:8500`.
    #[serde(default)]
    pub(crate) address: Option<String>,
    #[serde(default = "default_assignment_key")]
    pub key: String,
    #[serde(default)]
    pub(crate) format: FileFormat,
    /// ACL token (`X-Consul-Token`); else `token_file`, `CONSUL_HTTP_TOKEN_FILE`,
    /// `CONSUL_HTTP_TOKEN`.
    #[serde(default)]
    pub(crate) token: Option<String>,
    #[serde(default)]
    pub(crate) token_file: Option<PathBuf>,
    /// CA bundle for an `https` address; else `CONSUL_CACERT`.
    #[serde(default)]
    pub(crate) ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS; else `CONSUL_CLIENT_CERT` /
    /// `CONSUL_CLIENT_KEY`. Re-read when they change.
    #[serde(default)]
    pub(crate) cert_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) key_file: Option<PathBuf>,
    /// The name Consul's certificate is verified against, instead of the address's host; else
    /// `CONSUL_TLS_SERVER_NAME`.
    #[serde(default)]
    pub(crate) tls_server_name: Option<String>,
    #[serde(default)]
    pub(crate) datacenter: Option<String>,
    #[serde(default)]
    pub(crate) consistency: ConsulConsistency,
    /// How long Consul may hold a blocking query.
    #[serde(default = "default_consul_wait")]
    pub(crate) wait: Dur,
    /// The least time between two queries (a query answered sooner waits out the rest).
    #[serde(default = "default_consul_min_interval")]
    pub(crate) min_interval: Dur,
    #[serde(default)]
    pub(crate) backoff: BackoffConfig,
    /// The largest value accepted, in bytes; a larger one is an error (`too_large`).
    #[serde(default = "default_max_value_bytes")]
    pub(crate) max_value_bytes: usize,
    /// While the source is failing: how often Consul is asked whether it answers again
    /// (`GET /v1/status/leader`), so a recovery is not waited out for a whole backoff.
    #[serde(default = "default_consul_probe_interval")]
    pub(crate) probe_interval: Dur,
}

fn default_consul_wait() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_consul_min_interval() -> Dur {
    Dur(Duration::from_millis(100))
}
fn default_consul_probe_interval() -> Dur {
    Dur(Duration::from_millis(500))
}

/// Consul's read consistency modes.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ConsulConsistency {
    Default,
    /// Every read goes through the leader, which first checks it still leads. (envoyd passed no
    /// options: Consul's default mode.)
    #[default]
    Consistent,
    Stale,
}

/// Retry pacing after a source failure: exponential from `initial` to `max`, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackoffConfig {
    #[serde(default = "default_backoff_initial")]
    pub(crate) initial: Dur,
    #[serde(default = "default_backoff_max")]
    pub(crate) max: Dur,
}

fn default_backoff_initial() -> Dur {
    Dur(Duration::from_millis(100))
}
fn default_backoff_max() -> Dur {
    Dur(Duration::from_secs(30))
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: default_backoff_initial(),
            max: default_backoff_max(),
        }
    }
}

impl SourceConfig {
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::File { name, .. } => name,
            SourceConfig::Etcd(e) => &e.name,
            SourceConfig::Consul(c) => &c.name,
            SourceConfig::Kubernetes(k) => &k.name,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    /// The JSON object VOLTHA's leader core writes to `service/voltha/data/core/assignment`.
    #[default]
    VolthaAssignment,
    /// `{"set": ["host:port", ...], ...}`: named endpoint sets.
    Endpoints,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Protocol {
    Http1,
    #[default]
    Http2,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LbPolicy {
    #[default]
    RoundRobin,
    LeastRequest,
    Random,
    /// Consistent hashing on `hash_header`.
    RingHash,
    /// Consistent hashing on `hash_header`.
    Maglev,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DnsLookup {
    /// Every address a name resolves to is an endpoint (Envoy `STRICT_DNS`).
    #[default]
    Strict,
    /// One address at a time (Envoy `LOGICAL_DNS`), for large DNS-balanced services.
    Logical,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) protocol: Protocol,
    #[serde(default)]
    pub(crate) lb_policy: LbPolicy,
    /// The request header hashed by `ring_hash` and `maglev`.
    #[serde(default)]
    pub(crate) hash_header: Option<String>,
    #[serde(default = "default_connect_timeout")]
    pub(crate) connect_timeout: Dur,
    pub endpoints: EndpointsConfig,
    /// One Envoy cluster per set of the source (e.g. per `affinity-group`), named from a template.
    #[serde(default)]
    pub(crate) fan_out: Option<FanOutConfig>,
}

/// `fan_out`: one cluster per non-default set of the cluster's source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FanOutConfig {
    /// The member clusters' name: `{}` is replaced by the set's name (`vcore{}` → `vcore1`).
    pub(crate) name: String,
}

impl FanOutConfig {
    /// The member cluster of set `set`.
    pub(crate) fn member(&self, set: &str) -> String {
        self.name.replacen("{}", set, 1)
    }
}

fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(1))
}

/// Where a cluster's endpoints come from: exactly one of `source`, `static` or `dns`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(from = "EndpointsText")]
pub struct EndpointsConfig {
    /// Fed by this source (served over EDS; over DNS when a host is a name).
    pub source: Option<String>,
    /// With an `endpoints` file source: the set to take.
    pub(crate) set: Option<String>,
    /// The port for hosts that carry none (the assignment's hosts never do).
    pub port: Option<u16>,
    /// Fixed `ip:port` endpoints (served over EDS), as written.
    pub(crate) static_endpoints: Option<Vec<String>>,
    /// `host:port` names that Envoy resolves, as written.
    pub(crate) dns: Option<Vec<String>>,
    pub(crate) dns_lookup: DnsLookup,
    /// `static` or `dns` parsed as read (with `port` for the entries that carry none):
    /// (IP or host name, port), in the order written.
    pub(crate) fixed_hosts: Vec<(String, u16)>,
    /// Why entries of `static` or `dns` did not parse, for validation to report.
    bad_hosts: Vec<String>,
}

impl From<EndpointsText> for EndpointsConfig {
    fn from(t: EndpointsText) -> Self {
        let mut fixed_hosts = Vec::new();
        let mut bad_hosts = Vec::new();
        for s in t.static_endpoints.iter().flatten() {
            match validate::parse_static(s, t.port) {
                Ok(a) => fixed_hosts.push((a.ip().to_string(), a.port())),
                Err(m) => bad_hosts.push(m),
            }
        }
        for s in t.dns.iter().flatten() {
            match validate::parse_host_port(s, t.port) {
                Ok(hp) => fixed_hosts.push(hp),
                Err(m) => bad_hosts.push(m),
            }
        }
        EndpointsConfig {
            source: t.source,
            set: t.set,
            port: t.port,
            static_endpoints: t.static_endpoints,
            dns: t.dns,
            dns_lookup: t.dns_lookup,
            fixed_hosts,
            bad_hosts,
        }
    }
}

/// `endpoints` as written; [`EndpointsConfig`] adds the parsed hosts.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename = "EndpointsConfig")]
struct EndpointsText {
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    set: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default, rename = "static")]
    static_endpoints: Option<Vec<String>>,
    #[serde(default)]
    dns: Option<Vec<String>>,
    #[serde(default)]
    dns_lookup: DnsLookup,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Codec {
    #[default]
    Auto,
    Http1,
    Http2,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub(crate) name: String,
    /// `ip:port` to bind, e.g. `0.0.0.0:50555`.
    pub address: IpPort,
    #[serde(default)]
    pub(crate) codec: Codec,
    #[serde(default)]
    pub(crate) stat_prefix: Option<String>,
    #[serde(default)]
    pub(crate) tls: Option<TlsConfig>,
    #[serde(default)]
    pub(crate) grpc_json_transcoder: Option<TranscoderConfig>,
    #[serde(default)]
    pub(crate) access_log: Option<AccessLogConfig>,
    #[serde(default = "default_domains")]
    pub(crate) domains: Vec<String>,
    pub(crate) routes: Vec<RouteConfig>,
}

fn default_domains() -> Vec<String> {
    vec!["*".into()]
}

/// Downstream TLS. The files are read by Envoy, so the paths are Envoy's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsConfig {
    pub(crate) cert_file: String,
    pub(crate) key_file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TranscoderConfig {
    /// Fully qualified gRPC services to transcode, e.g. `voltha.HealthService`.
    pub(crate) services: Vec<String>,
    /// A `FileDescriptorSet` file read by voltha-xds and sent inline to Envoy. Default: the
    /// VOLTHA northbound subset built into voltha-xds (`proto-vendor/`).
    #[serde(default)]
    pub(crate) descriptor_file: Option<PathBuf>,
    /// The content of `descriptor_file`, read once when the configuration is loaded (a file
    /// that disappears later does not break later snapshots).
    #[serde(skip)]
    pub(crate) descriptor: Option<std::sync::Arc<Vec<u8>>>,
    #[serde(default = "yes")]
    pub(crate) convert_grpc_status: bool,
    #[serde(default)]
    pub(crate) auto_mapping: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccessLogConfig {
    #[serde(default = "default_log_path")]
    pub(crate) path: String,
    /// An Envoy format string; Envoy's default format when absent.
    #[serde(default)]
    pub(crate) format: Option<String>,
}

fn default_log_path() -> String {
    "/dev/stdout".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteConfig {
    /// Path prefix match (one of `prefix` and `path`).
    #[serde(default)]
    pub(crate) prefix: Option<String>,
    /// Exact path match.
    #[serde(default)]
    pub(crate) path: Option<String>,
    #[serde(default)]
    pub(crate) headers: Vec<HeaderMatchConfig>,
    /// The target cluster; empty when `cluster_header` names it.
    #[serde(default)]
    pub(crate) cluster: String,
    /// Route to the cluster named by this request header's value (Envoy `cluster_header`).
    #[serde(default)]
    pub(crate) cluster_header: Option<String>,
    #[serde(default)]
    pub(crate) prefix_rewrite: Option<String>,
    /// `none`, or a duration; Envoy's default (15s) when absent.
    #[serde(default)]
    pub(crate) timeout: Option<Timeout>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeaderMatchConfig {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) exact: Option<String>,
    #[serde(default)]
    pub(crate) prefix: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// Envoys whose `node.cluster` equals this name get this group's resources.
    pub name: String,
    #[serde(default)]
    pub listeners: Vec<String>,
    /// Clusters served besides those the listeners' routes name.
    #[serde(default)]
    pub(crate) clusters: Vec<String>,
    /// The services this group's proxyless gRPC clients get (served as the group
    /// `<name>/grpc`; an Envoy of the group never sees them).
    #[serde(default)]
    pub(crate) grpc_services: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{0}")]
    Parse(String),
    #[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
    /// Larger than 4 MiB; refused before parsing.
    #[error("{origin} is {size} bytes, more than the {limit} bytes (4 MiB) a configuration may have")]
    TooLarge { origin: String, size: u64, limit: u64 },
    /// Collections nested more than 64 deep; refused before parsing.
    #[error(
        "{origin}, line {line}, column {column}: collections nested more than {limit} deep \
         (a configuration may nest mappings and lists at most {limit} levels)"
    )]
    TooDeep {
        origin: String,
        line: usize,
        column: usize,
        limit: usize,
    },
}

impl Config {
    /// Parses and validates a YAML configuration.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Self::from_yaml_named(text, "the configuration")
    }

    /// [`Config::from_yaml`], with `origin` naming the text in a limit's error.
    fn from_yaml_named(text: &str, origin: &str) -> Result<Config, ConfigError> {
        limits::check(text, origin)?;
        let mut config: Config = yaml::from_str(text).map_err(ConfigError::Parse)?;
        let mut errors = config.read_files();
        errors.extend(validate::validate(&config));
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// Reads the files the configuration names (transcoder descriptor sets) into memory.
    fn read_files(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        for l in &mut self.listeners {
            if let Some(t) = &mut l.grpc_json_transcoder {
                if let Some(p) = &t.descriptor_file {
                    match std::fs::read(p) {
                        Ok(b) => t.descriptor = Some(std::sync::Arc::new(b)),
                        Err(err) => errors.push(format!(
                            "listener {:?}: cannot read descriptor_file {}: {err}",
                            l.name,
                            p.display()
                        )),
                    }
                }
            }
        }
        errors
    }

    /// Reads, parses and validates a configuration file.
    /// A file larger than 4 MiB is refused without reading it all.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        Self::load_text(path).map(|(config, _)| config)
    }

    /// [`Config::load`], with the text it parsed (what `serve` records as applied).
    pub fn load_text(path: &std::path::Path) -> Result<(Config, String), ConfigError> {
        use std::io::Read;
        let read_error = |error| ConfigError::Read {
            path: path.display().to_string(),
            error,
        };
        let too_large = |size| ConfigError::TooLarge {
            origin: path.display().to_string(),
            size,
            limit: MAX_CONFIG_BYTES as u64,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let len = file.metadata().map_err(read_error)?.len();
        if len > MAX_CONFIG_BYTES as u64 {
            return Err(too_large(len));
        }
        // The file may grow between the two calls: read one byte past the limit at most.
        let mut text = String::new();
        file.take(MAX_CONFIG_BYTES as u64 + 1)
            .read_to_string(&mut text)
            .map_err(read_error)?;
        if text.len() > MAX_CONFIG_BYTES {
            return Err(too_large(text.len() as u64));
        }
        match Self::from_yaml_named(&text, &path.display().to_string()) {
            Ok(config) => Ok((config, text)),
            Err(ConfigError::Parse(m)) => Err(ConfigError::Parse(format!("{}: {m}", path.display()))),
            Err(other) => Err(other),
        }
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Self::from_yaml(EMBEDDED_DEFAULT)
    }

    pub(crate) fn cluster(&self, name: &str) -> Option<&ClusterConfig> {
        self.clusters.iter().find(|c| c.name == name)
    }

    pub fn listener(&self, name: &str) -> Option<&ListenerConfig> {
        self.listeners.iter().find(|l| l.name == name)
    }

    /// The clusters a group serves: those its listeners route to, then its extra ones; sorted.
    pub(crate) fn group_clusters(&self, group: &GroupConfig) -> Vec<String> {
        let mut out: Vec<String> = group
            .listeners
            .iter()
            .filter_map(|l| self.listener(l))
            .flat_map(|l| {
                l.routes
                    .iter()
                    .filter(|r| !r.cluster.is_empty())
                    .map(|r| r.cluster.clone())
            })
            .chain(group.clusters.iter().cloned())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// A short human summary (for `validate`).
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for g in &self.groups {
            let default = if g.name == self.default_group { " (default)" } else { "" };
            s.push_str(&format!("group {}{default}\n", g.name));
            for l in g.listeners.iter().filter_map(|l| self.listener(l)) {
                s.push_str(&format!(
                    "  listener {} on {} ({:?}, {} routes{})\n",
                    l.name,
                    l.address.text(),
                    l.codec,
                    l.routes.len(),
                    if l.tls.is_some() { ", TLS" } else { "" }
                ));
            }
            for svc in g.grpc_services.iter().filter_map(|n| self.grpc_service(n)) {
                s.push_str(&format!(
                    "  grpc service {} (xds:///{}, {} routes, to proxyless gRPC clients as group {})\n",
                    svc.name,
                    svc.name,
                    svc.routes.len(),
                    crate::xds::cache::proxyless_group_name(&g.name)
                ));
            }
            for c in self.group_clusters(g) {
                if let Some(c) = self.cluster(&c) {
                    let from = match (&c.endpoints.source, &c.endpoints.static_endpoints, &c.endpoints.dns) {
                        (Some(src), _, _) => format!("source {src}"),
                        (_, Some(st), _) => format!("{} static endpoints", st.len()),
                        (_, _, Some(d)) => format!("DNS {}", d.join(", ")),
                        _ => String::new(),
                    };
                    let fan = c
                        .fan_out
                        .as_ref()
                        .map(|f| format!(", one cluster {} per set", f.name))
                        .unwrap_or_default();
                    s.push_str(&format!(
                        "  cluster {} ({:?}, {:?}, {from}{fan})\n",
                        c.name, c.protocol, c.lb_policy
                    ));
                }
            }
        }
        for src in &self.sources {
            match src {
                SourceConfig::File { name, path, format, .. } => {
                    s.push_str(&format!("source {name}: file {} ({format:?})\n", path.display()))
                }
                SourceConfig::Consul(c) => s.push_str(&format!(
                    "source {}: consul key {:?} at {} ({:?})\n",
                    c.name,
                    c.key,
                    c.address.as_deref().unwrap_or("CONSUL_HTTP_ADDR"),
                    c.format
                )),
                SourceConfig::Etcd(e) => {
                    let at = if e.endpoints.is_empty() {
                        "ETCDCTL_ENDPOINTS".to_string()
                    } else {
                        e.endpoints.join(",")
                    };
                    s.push_str(&format!(
                        "source {}: etcd key {:?} at {at} ({:?})\n",
                        e.name, e.key, e.format
                    ))
                }
                SourceConfig::Kubernetes(k) => s.push_str(&format!(
                    "source {}: kubernetes pods in {} ({}){}\n",
                    k.name,
                    k.namespaces.join(","),
                    k.label_selector.as_deref().unwrap_or("every pod"),
                    k.group_by
                        .as_deref()
                        .map(|g| format!(", grouped by {g}"))
                        .unwrap_or_default()
                )),
            }
        }
        s
    }
}

#[cfg(test)]
mod tests;

/// The engine's TLS settings from `server.tls`.
pub fn xds_tls(t: &XdsTlsConfig) -> xds_engine::listen::XdsTlsConfig {
    xds_engine::listen::XdsTlsConfig {
        cert_file: t.cert_file.clone(),
        key_file: t.key_file.clone(),
        client_ca_file: t.client_ca_file.clone(),
        reload_interval: t.reload_interval.0,
    }
}

/// The engine's CSDS bounds from `server.csds`.
pub(crate) fn csds_limits(c: &CsdsConfig) -> xds_engine::csds::CsdsLimits {
    xds_engine::csds::CsdsLimits {
        max_concurrent_requests: c.max_concurrent_requests,
        max_response_bytes: c.max_response_bytes,
        stream_requests_per_second: c.stream_requests_per_second,
        stream_burst: c.stream_burst,
    }
}
