//! The `mnister` command-line client: classify files, stream bulk input,
//! load-test, inspect. Each subcommand is its own module.

pub mod bench;
pub mod classify;
pub mod stream;

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::config::parse_duration;
use crate::proto::v1::digit_classifier_client::DigitClassifierClient;

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
        let endpoint = Endpoint::from_shared(self.addr.clone())
            .map_err(|e| CliError::BadAddress {
                addr: self.addr.clone(),
                reason: e.to_string(),
            })?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        endpoint.connect().await.map_err(|e| CliError::Connect {
            addr: self.addr.clone(),
            reason: error_chain(&e),
        })
    }

    pub async fn client(&self) -> Result<DigitClassifierClient<Channel>, CliError> {
        Ok(DigitClassifierClient::new(self.channel().await?).max_decoding_message_size(64 << 20))
    }

    /// A request carrying this connection's deadline.
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.timeout);
        r
    }
}
