//! Where the KV sources connect: the parsing of a Consul address and of an etcd endpoint.
//! Validation checks them here before anything starts; the sources use the same functions,
//! so config never calls into `sources`.

/// The base URL of a Consul address given as `host:port` or with a scheme.
pub fn base_url(addr: &str, tls: bool) -> Result<String, String> {
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
pub fn endpoint_uri(ep: &str, tls: bool) -> Result<String, String> {
    let uri = if ep.starts_with("http://") || ep.starts_with("https://") {
        ep.to_string()
    } else {
        format!("{}://{ep}", if tls { "https" } else { "http" })
    };
    let parsed: tonic::codegen::http::Uri = uri.parse().map_err(|e| format!("not a valid address: {e}"))?;
    if parsed.host().is_none_or(str::is_empty) || parsed.port_u16().is_none() {
        return Err("needs a host and a port".to_string());
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            endpoint_uri("127.0.0.1:2379", false).as_deref(),
            Ok("http://127.0.0.1:2379")
        );
        assert_eq!(endpoint_uri("etcd:2379", true).as_deref(), Ok("https://etcd:2379"));
        assert_eq!(
            endpoint_uri("https://etcd:2379", false).as_deref(),
            Ok("https://etcd:2379")
        );
        assert!(endpoint_uri("etcd", false).is_err(), "no port");
        assert!(endpoint_uri("", false).is_err());
        assert!(endpoint_uri("http://:2379", false).is_err());
    }
}
