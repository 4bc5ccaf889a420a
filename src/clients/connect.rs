//! How the command-line clients reach a server: plaintext, TLS, or mutual TLS, and the bearer
//! token a callers file asks for.

use std::path::PathBuf;

use tonic::{
    metadata::MetadataValue,
    transport::{Certificate, ClientTlsConfig, Endpoint, Identity},
};

/// TLS and caller options shared by `modeld label` and `modeld verify`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientAuth {
    /// CA bundle (PEM) that signed the server's certificate; turns TLS on (also implied by an
    /// https:// address).
    #[arg(long, env = "MODELD_CLIENT_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with --client-key.
    #[arg(long, env = "MODELD_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(long, env = "MODELD_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Name the server's certificate must carry [default: the address's host].
    #[arg(long)]
    pub tls_server_name: Option<String>,
    /// File holding the bearer token to send (`authorization: Bearer <token>`).
    #[arg(long, env = "MODELD_CLIENT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl ClientAuth {
    /// The endpoint for `addr`, with TLS when asked for.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, String> {
        let endpoint =
            Endpoint::from_shared(addr.to_owned()).map_err(|e| format!("`{addr}` is not an address: {e}"))?;
        if self.ca_cert.is_none() && self.client_cert.is_none() && !addr.starts_with("https://") {
            return Ok(endpoint);
        }
        let read = |path: &PathBuf| std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()));
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &self.ca_cert {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(name) = &self.tls_server_name {
            tls = tls.domain_name(name);
        }
        endpoint.tls_config(tls).map_err(|e| format!("TLS settings: {e}"))
    }

    /// The `authorization` value to send, if a token file is given.
    pub fn authorization(&self) -> Result<Option<MetadataValue<tonic::metadata::Ascii>>, String> {
        let Some(path) = &self.token_file else { return Ok(None) };
        let token = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        format!("Bearer {}", token.trim())
            .parse()
            .map(Some)
            .map_err(|_| format!("{}: the token is not printable ASCII", path.display()))
    }
}

/// `message` as a request carrying `authorization`, when there is one.
pub fn request<T>(message: T, authorization: &Option<MetadataValue<tonic::metadata::Ascii>>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = authorization {
        request.metadata_mut().insert("authorization", value.clone());
    }
    request
}
