//! Values the configuration writes as text and the later stages use parsed: listen addresses
//! and listeners' addresses ([`IpPort`]), fixed cluster endpoints
//! ([`super::EndpointsConfig::fixed_hosts`]), the pod source's `name_regex` and `api_server`
//! ([`Parsed`]). Each is parsed once, as the configuration is read: validation reports what did
//! not parse, and the later stages read the parsed form. Where the KV sources connect (a Consul address, an etcd endpoint) may also come
//! from the environment when the source starts, so those are parsed by the functions here,
//! which validation and the sources share (config never calls into `sources`).

use std::net::SocketAddr;

use serde::{Deserialize, Deserializer};

/// A value written as text in the configuration and parsed once, as it is read (an address, a
/// regular expression, a URL). Validation refuses a configuration where one does not parse,
/// naming its text and why; the later stages read [`Parsed::value`], so they have no parse
/// error of their own to handle.
#[derive(Debug, Clone)]
pub struct Parsed<T> {
    text: String,
    value: Result<T, String>,
}

/// Two parsed values are the same setting when their texts are (the value follows the text).
impl<T> PartialEq for Parsed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

/// How a [`Parsed`] value is read from its text.
pub(crate) trait FromText: Sized {
    /// The value, or why the text is not one.
    fn from_text(text: &str) -> Result<Self, String>;
}

impl FromText for SocketAddr {
    fn from_text(text: &str) -> Result<Self, String> {
        text.parse().map_err(|e: std::net::AddrParseError| e.to_string())
    }
}

impl FromText for regex::Regex {
    fn from_text(text: &str) -> Result<Self, String> {
        regex::Regex::new(text).map_err(|e| e.to_string())
    }
}

impl<T: FromText> From<&str> for Parsed<T> {
    fn from(text: &str) -> Self {
        Parsed {
            text: text.to_string(),
            value: T::from_text(text),
        }
    }
}

impl<'de, T: FromText> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ok(Parsed::from(text.as_str()))
    }
}

impl<T> Parsed<T> {
    /// As written in the configuration.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// Why the text does not parse (validation reports it), or `None`.
    pub(super) fn error(&self) -> Option<&str> {
        self.value.as_ref().err().map(String::as_str)
    }

    /// The parsed value. `None` only for a text that did not parse, which validation refuses:
    /// a loaded configuration holds only values.
    pub(crate) fn value(&self) -> Option<&T> {
        self.value.as_ref().ok()
    }
}

/// An `ip:port` of the configuration (a listen address, a listener's address).
pub(crate) type IpPort = Parsed<SocketAddr>;

impl Parsed<SocketAddr> {
    /// The address. Validation refuses a configuration whose text does not parse, so for a
    /// loaded configuration this is always the parsed address (never the `0.0.0.0:0` fallback).
    pub fn addr(&self) -> SocketAddr {
        self.value().copied().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
    }
}

/// The base URL of a Consul address given as `host:port` or with a scheme.
pub(crate) fn base_url(addr: &str, tls: bool) -> Result<String, String> {
    let addr = addr.trim().trim_end_matches('/');
    let url = if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("{}://{addr}", if tls { "https" } else { "http" })
    };
    let parsed: reqwest::Url = url.parse().map_err(|e| format!("not a valid address: {e}"))?;
    if parsed.host_str().is_none_or(str::is_empty) || parsed.path() != "/" {
        return Err("expected host:port or http(s)://host:port".to_string());
    }
    Ok(url)
}

/// The URI of an etcd endpoint given as `host:port` or with an `http://` / `https://` scheme.
pub(crate) fn endpoint_uri(ep: &str, tls: bool) -> Result<tonic::codegen::http::Uri, String> {
    let uri = if ep.starts_with("http://") || ep.starts_with("https://") {
        ep.to_string()
    } else {
        format!("{}://{ep}", if tls { "https" } else { "http" })
    };
    let parsed: tonic::codegen::http::Uri = uri.parse().map_err(|e| format!("not a valid address: {e}"))?;
    if parsed.host().is_none_or(str::is_empty) || parsed.port_u16().is_none() {
        return Err("needs a host and a port".to_string());
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EndpointsConfig;

    #[test]
    fn addresses_are_parsed_as_they_are_read() {
        let a: IpPort = crate::config::yaml::from_str("\"[::]:18000\"").expect("yaml");
        assert_eq!(a.addr(), SocketAddr::from(([0u16; 8], 18000)));
        assert_eq!(a.text(), "[::]:18000");
        assert_eq!(a.error(), None);
        let bad: IpPort = crate::config::yaml::from_str("localhost:18000").expect("read; refused by validation");
        assert_eq!(bad.value(), None);
        assert_eq!(bad.text(), "localhost:18000");
        assert!(bad.error().is_some());
    }

    #[test]
    fn fixed_endpoints_are_parsed_as_they_are_read_with_the_default_port() {
        let ep: EndpointsConfig =
            crate::config::yaml::from_str(r#"{ static: ["10.0.0.1", "[fd00::1]:81"], port: 80 }"#).expect("yaml");
        assert_eq!(
            ep.fixed_hosts,
            [("10.0.0.1".to_string(), 80), ("fd00::1".to_string(), 81)]
        );
        assert!(ep.bad_hosts.is_empty());
        let ep: EndpointsConfig =
            crate::config::yaml::from_str(r#"{ dns: ["vcore:81", "vcore-1"], port: 80 }"#).expect("yaml");
        assert_eq!(ep.fixed_hosts, [("vcore".to_string(), 81), ("vcore-1".to_string(), 80)]);
        let ep: EndpointsConfig = crate::config::yaml::from_str(r#"{ dns: ["bad host:80", "ok:1"] }"#).expect("yaml");
        assert_eq!(ep.fixed_hosts, [("ok".to_string(), 1)]);
        assert_eq!(ep.bad_hosts.len(), 1, "{:?}", ep.bad_hosts);
        let e = crate::config::yaml::from_str::<EndpointsConfig>("{ sttic: [] }").expect_err("unknown key");
        assert!(e.to_string().contains("unknown field `sttic`"), "{e}");
    }

    #[test]
    fn addresses_take_a_scheme_or_get_one() {
        assert_eq!(
            base_url("127.0.0.1:8500", false).as_deref(),
            Ok("http://127.0.0.1:8500")
        );
        assert_eq!(base_url("consul:8501", true).as_deref(), Ok("https://consul:8501"));
        assert_eq!(
            base_url("https://consul:8501/", false).as_deref(),
            Ok("https://consul:8501")
        );
        assert!(base_url("http://consul:8500/v1", false).is_err());
        assert!(base_url("", false).is_err());
    }

    #[test]
    fn endpoints_take_a_scheme_or_get_one() {
        let uri = |ep, tls| endpoint_uri(ep, tls).map(|u| u.to_string());
        assert_eq!(uri("127.0.0.1:2379", false).as_deref(), Ok("http://127.0.0.1:2379/"));
        assert_eq!(uri("etcd:2379", true).as_deref(), Ok("https://etcd:2379/"));
        assert_eq!(uri("https://etcd:2379", false).as_deref(), Ok("https://etcd:2379/"));
        assert!(endpoint_uri("etcd", false).is_err(), "no port");
        assert!(endpoint_uri("", false).is_err());
        assert!(endpoint_uri("http://:2379", false).is_err());
    }
}
