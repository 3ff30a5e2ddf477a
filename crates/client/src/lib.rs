//! The `mnister` command-line client: classify files, stream bulk input,
//! load-test, inspect. Each subcommand is its own module.
//!
//! It talks to the server only through the public API, with stubs generated
//! here from `proto/` as any other client's would be: it does not link the
//! server.

pub mod bench;
pub mod classify;
pub mod proto;
pub mod stream;

use std::path::PathBuf;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::proto::v1::digit_classifier_client::DigitClassifierClient;
use mnister_core::duration::parse_duration;

/// Connection flags shared by every subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// Server address.
    #[arg(
        long,
        global = true,
        env = "MNISTER_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub addr: String,
    /// Per-call deadline, sent as grpc-timeout.
    #[arg(long, global = true, env = "MNISTER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// How long to try connecting.
    #[arg(long, global = true, env = "MNISTER_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// CA bundle (PEM) to verify the server with; turns TLS on (as does an https:// address).
    #[arg(long, global = true, env = "MNISTER_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, global = true, env = "MNISTER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long, global = true, env = "MNISTER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Server name to verify, when it differs from the address's host.
    #[arg(long, global = true, env = "MNISTER_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
    /// File with the bearer token to send.
    #[arg(long, global = true, env = "MNISTER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The token's header value, read once when connecting.
    #[arg(skip)]
    token: std::sync::OnceLock<Option<MetadataValue<tonic::metadata::Ascii>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot connect to {addr}: {reason}; is mnister-server running there?")]
    Connect { addr: String, reason: String },
    #[error("{addr} is not a valid address: {reason}")]
    BadAddress { addr: String, reason: String },
    #[error("the server answered {code:?}: {message}")]
    Server { code: tonic::Code, message: String },
    #[error("{0}")]
    Input(String),
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        CliError::Server {
            code: s.code(),
            message: s.message().to_string(),
        }
    }
}

/// The full chain of causes, so "connection refused" is not hidden behind
/// "transport error".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = c.source();
    }
    s
}

impl Connection {
    pub async fn channel(&self) -> Result<Channel, CliError> {
        self.load_token()?;
        let mut endpoint = Endpoint::from_shared(self.addr.clone())
            .map_err(|e| CliError::BadAddress {
                addr: self.addr.clone(),
                reason: e.to_string(),
            })?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        if self.tls_ca.is_some() || self.addr.starts_with("https://") {
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|e| CliError::Input(format!("{}: {e}", p.display())))
            };
            let mut tls = ClientTlsConfig::new().with_enabled_roots();
            if let Some(ca) = &self.tls_ca {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(c), Some(k)) = (&self.tls_cert, &self.tls_key) {
                tls = tls.identity(Identity::from_pem(read(c)?, read(k)?));
            }
            if let Some(d) = &self.tls_domain {
                tls = tls.domain_name(d.clone());
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| CliError::BadAddress {
                addr: self.addr.clone(),
                reason: error_chain(&e),
            })?;
        }
        endpoint.connect().await.map_err(|e| CliError::Connect {
            addr: self.addr.clone(),
            reason: error_chain(&e),
        })
    }

    pub async fn client(&self) -> Result<DigitClassifierClient<Channel>, CliError> {
        Ok(DigitClassifierClient::new(self.channel().await?).max_decoding_message_size(64 << 20))
    }

    /// A request carrying this connection's deadline and token.
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.timeout);
        self.authorize(&mut r);
        r
    }

    /// Reads the token file once, so a typo fails loudly instead of every
    /// call coming back UNAUTHENTICATED.
    fn load_token(&self) -> Result<(), CliError> {
        if self.token.get().is_some() {
            return Ok(());
        }
        let value = match &self.token_file {
            None => None,
            Some(p) => {
                let t = std::fs::read_to_string(p)
                    .map_err(|e| CliError::Input(format!("token file {}: {e}", p.display())))?;
                let t = t.trim();
                if t.is_empty() {
                    return Err(CliError::Input(format!(
                        "token file {} is empty",
                        p.display()
                    )));
                }
                Some(MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| {
                    CliError::Input(format!(
                        "token file {}: the token must be printable ASCII",
                        p.display()
                    ))
                })?)
            }
        };
        let _ = self.token.set(value);
        Ok(())
    }

    /// Adds the bearer token, if one is configured.
    pub fn authorize<T>(&self, r: &mut tonic::Request<T>) {
        if let Some(Some(v)) = self.token.get() {
            r.metadata_mut().insert("authorization", v.clone());
        }
    }
}
