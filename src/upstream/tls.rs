//! TLS to upstreams: one rustls client configuration (ring provider,
//! webpki-roots plus `[upstream].extra_ca_file`), built once at start-up and
//! shared by every connection.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use crate::config::ConfigError;
use crate::policy::target::Host;

/// The trusted roots: webpki-roots and the operator's extra PEM file.
pub(crate) fn root_store(extra_ca_file: Option<&Path>) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = extra_ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| ConfigError(format!("upstream.extra_ca_file {}: {e}", path.display())))?;
        let mut added = 0;
        for cert in certs {
            let cert = cert.map_err(|e| ConfigError(format!("upstream.extra_ca_file {}: {e}", path.display())))?;
            roots.add(cert).map_err(|e| ConfigError(format!("upstream.extra_ca_file {}: {e}", path.display())))?;
            added += 1;
        }
        if added == 0 {
            return Err(ConfigError(format!("upstream.extra_ca_file {}: no certificate found", path.display())));
        }
    }
    Ok(roots)
}

/// The client configuration with the given ALPN protocols.
pub(crate) fn client_config(roots: RootCertStore, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError(format!("TLS client configuration: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The name to verify the certificate against. For IP literals rustls sends
/// no SNI (RFC 6066 forbids it) and checks the IP SAN.
pub(crate) fn server_name(host: &Host) -> Option<ServerName<'static>> {
    match host {
        Host::Name(n) => ServerName::try_from(n.to_string()).ok(),
        Host::V4(a) => Some(ServerName::IpAddress(std::net::IpAddr::V4(*a).into())),
        Host::V6(a) => Some(ServerName::IpAddress(std::net::IpAddr::V6(*a).into())),
    }
}
