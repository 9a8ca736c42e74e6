//! Command-line flags, each with an environment variable equivalent.

use std::net::SocketAddr;

use clap::{Parser, ValueEnum};

use crate::docker::engine::Endpoint;
use crate::session::Limits;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Porthole: web terminals into Docker containers.
#[derive(Debug, Clone, Parser)]
#[command(name = "porthole", version, about)]
pub struct Config {
    /// Address to serve HTTP and Socket.IO on. Port 0 picks a free port.
    #[arg(long, env = "PORTHOLE_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,

    /// Docker daemon: unix:///path/docker.sock or tcp://host:port. Defaults to $DOCKER_HOST, else the local socket.
    #[arg(long, env = "PORTHOLE_DOCKER_HOST")]
    pub docker_host: Option<String>,

    /// Most terminals one Socket.IO connection may hold at once.
    #[arg(long, env = "PORTHOLE_MAX_TERMINALS_PER_SOCKET", default_value_t = 32)]
    pub max_terminals_per_socket: usize,

    /// Most terminals the whole server may hold at once.
    #[arg(long, env = "PORTHOLE_MAX_TERMINALS", default_value_t = 1024)]
    pub max_terminals: usize,

    /// Seconds a terminal keeps running after its last viewer disconnected, so the client can resume it
    /// (protocol version 2 clients). 0: end terminals when their socket disconnects.
    #[arg(long, env = "PORTHOLE_GRACE_PERIOD_SECS", default_value_t = 600)]
    pub grace_period_secs: u64,

    /// Bytes of recent output kept per terminal, replayed to clients that attach or resume.
    #[arg(long, env = "PORTHOLE_OUTPUT_LOG_BYTES", default_value_t = 1024 * 1024)]
    pub output_log_bytes: usize,

    /// Serve on a non-loopback address although there is no authentication yet: anyone who can reach the
    /// port gets a shell in every container.
    #[arg(long, env = "PORTHOLE_INSECURE_ALLOW_REMOTE", default_value_t = false)]
    pub insecure_allow_remote: bool,

    /// Seconds to wait for terminals to close on SIGINT/SIGTERM before exiting anyway.
    #[arg(long, env = "PORTHOLE_SHUTDOWN_TIMEOUT_SECS", default_value_t = 20)]
    pub shutdown_timeout_secs: u64,

    /// Log format (filter with RUST_LOG, default `info`).
    #[arg(long, env = "PORTHOLE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    /// Defaults, as if no flag were given (environment ignored); for tests and embedding.
    pub fn defaults() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            docker_host: None,
            max_terminals_per_socket: 32,
            max_terminals: 1024,
            grace_period_secs: 600,
            output_log_bytes: 1024 * 1024,
            insecure_allow_remote: false,
            shutdown_timeout_secs: 20,
            log_format: LogFormat::Text,
        }
    }

    /// Checks the combination of flags; the message is shown to the user as is.
    pub fn validate(&self) -> Result<(), String> {
        if !self.listen.ip().is_loopback() && !self.insecure_allow_remote {
            return Err(format!(
                "refusing to listen on {}: Porthole has no authentication yet, so anyone reaching this address would \
                 get a shell in every container. Listen on a loopback address (the default 127.0.0.1:7070), or pass \
                 --insecure-allow-remote if you really mean it.",
                self.listen
            ));
        }
        if self.max_terminals_per_socket == 0 || self.max_terminals == 0 {
            return Err("terminal limits must be at least 1".into());
        }
        if self.output_log_bytes < 4096 || self.output_log_bytes > 256 * 1024 * 1024 {
            return Err("--output-log-bytes must be between 4096 and 268435456".into());
        }
        self.endpoint().map(|_| ())
    }

    pub fn endpoint(&self) -> Result<Endpoint, String> {
        match &self.docker_host {
            Some(h) if !h.is_empty() => Endpoint::parse(h),
            _ => Endpoint::from_env(),
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            per_owner: self.max_terminals_per_socket,
            total: self.max_terminals,
            grace: std::time::Duration::from_secs(self.grace_period_secs),
            log_bytes: self.output_log_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_listen_needs_an_explicit_opt_in() {
        let mut c = Config::defaults();
        assert!(c.validate().is_ok());
        c.listen = "0.0.0.0:7070".parse().unwrap();
        assert!(c.validate().unwrap_err().contains("--insecure-allow-remote"));
        c.insecure_allow_remote = true;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn flags_have_env_equivalents_and_defaults() {
        let c = Config::try_parse_from(["porthole", "--max-terminals", "3", "--docker-host", "tcp://h:1"]).unwrap();
        assert_eq!(c.max_terminals, 3);
        assert_eq!(c.endpoint(), Ok(Endpoint::Tcp("h:1".into())));
        assert!(Config::try_parse_from(["porthole", "--docker-host", "ssh://x"]).unwrap().validate().is_err());
    }
}
