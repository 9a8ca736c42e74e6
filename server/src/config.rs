//! Command-line flags, each with an environment variable equivalent.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::auth::JwtConfig;
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

    /// Docker daemon, repeatable: `NAME=URL` or a bare URL (named `local`); URL is unix:///path/docker.sock or
    /// tcp://host:port. Defaults to $DOCKER_HOST, else the local socket. The first takes new sandboxes.
    #[arg(long = "docker-host", env = "PORTHOLE_DOCKER_HOSTS", value_delimiter = ',')]
    pub docker_hosts: Vec<String>,

    /// Most terminals one client may hold at once: a `clientId` and all its sockets, or a socket without one.
    /// (The flag's name is older than client ids.)
    #[arg(long = "max-terminals-per-socket", env = "PORTHOLE_MAX_TERMINALS_PER_SOCKET", default_value_t = 32)]
    pub max_terminals_per_client: usize,

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

    /// Local access token (local mode, when no JWT key is given). Default: a random one, printed in the URL at
    /// start. Setting it keeps browser sessions valid across restarts.
    #[arg(long, env = "PORTHOLE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// JWT mode: file with the HS256 shared secret (at least 32 bytes).
    #[arg(long, env = "PORTHOLE_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// JWT mode: PEM file with an RSA (RS256) or EC P-256 (ES256) public key.
    #[arg(long, env = "PORTHOLE_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// JWT mode: JWKS file with RSA (RS256) or P-256 (ES256) keys, chosen by `kid`.
    #[arg(long, env = "PORTHOLE_JWT_JWKS")]
    pub jwt_jwks: Option<PathBuf>,

    /// Required `iss` of JWTs.
    #[arg(long, env = "PORTHOLE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` of JWTs.
    #[arg(long, env = "PORTHOLE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// JWT claim with the user's subject (dotted paths reach into objects).
    #[arg(long, env = "PORTHOLE_JWT_SUBJECT_CLAIM", default_value = "sub")]
    pub jwt_subject_claim: String,

    /// JWT claim with the user's groups (array of strings, or a string).
    #[arg(long, env = "PORTHOLE_JWT_GROUPS_CLAIM", default_value = "groups")]
    pub jwt_groups_claim: String,

    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    #[arg(long, env = "PORTHOLE_JWT_LEEWAY_SECS", default_value_t = 30)]
    pub jwt_leeway_secs: u64,

    /// Authorization policy (TOML), re-read on SIGHUP. Without one, every authenticated user may do everything.
    #[arg(long, env = "PORTHOLE_POLICY")]
    pub policy: Option<PathBuf>,

    /// Sandbox profiles (TOML: one `[profile.NAME]` table each), re-read on SIGHUP. Without it no sandbox can be
    /// created (those made before stay their owners').
    #[arg(long, env = "PORTHOLE_SANDBOXES")]
    pub sandboxes: Option<PathBuf>,

    /// Directory for Porthole's own state (an SQLite file: this instance's id and the sandboxes it made).
    /// Default: $XDG_DATA_HOME/porthole, else ~/.local/share/porthole.
    #[arg(long, env = "PORTHOLE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// What is recorded of terminals where no policy rule says (`record`): off, output, or all (with input).
    #[arg(long, env = "PORTHOLE_RECORD", value_enum, default_value_t = RecordFlag::Off)]
    pub record: RecordFlag,

    /// Where recordings (asciicast v2 `.cast` files) are written. Default: `recordings` in the state directory.
    #[arg(long, env = "PORTHOLE_RECORDINGS_DIR")]
    pub recordings_dir: Option<PathBuf>,

    /// Finished recordings older than this are removed (`30d`, `12h`, ...). Default: kept.
    #[arg(long, env = "PORTHOLE_RECORDINGS_MAX_AGE", value_parser = parse_age)]
    pub recordings_max_age: Option<std::time::Duration>,

    /// The oldest finished recordings are removed while all recordings together are larger (`10g`, `512m`,
    /// ...). Default: no limit.
    #[arg(long, env = "PORTHOLE_RECORDINGS_MAX_BYTES", value_parser = parse_bytes)]
    pub recordings_max_bytes: Option<u64>,

    /// Most sandboxes one user may hold at once (the policy's `max_sandboxes` overrides it).
    #[arg(long, env = "PORTHOLE_MAX_SANDBOXES_PER_USER", default_value_t = 4)]
    pub max_sandboxes_per_user: usize,

    /// Sandbox creates one user may start per second (bursts of four times that); more are refused with
    /// `rate_limited`.
    #[arg(long, env = "PORTHOLE_MAX_SANDBOX_CREATES_PER_SEC", default_value_t = 2)]
    pub max_sandbox_creates_per_sec: u32,

    /// TLS certificate chain (PEM); with --tls-key, serves HTTPS/WSS and sends HSTS.
    #[arg(long, env = "PORTHOLE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM).
    #[arg(long, env = "PORTHOLE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Reverse proxies (IP or CIDR, repeatable or comma-separated) whose X-Forwarded-For/-Proto/-Host are
    /// believed. Requests from other peers have those headers ignored.
    #[arg(long, env = "PORTHOLE_TRUSTED_PROXY", value_delimiter = ',', value_parser = parse_net)]
    pub trusted_proxy: Vec<ipnet::IpNet>,

    /// Extra origins (e.g. https://porthole.example.com) allowed to open sockets and send API requests, besides
    /// the origin the request was served on.
    #[arg(long, env = "PORTHOLE_ALLOWED_ORIGIN", value_delimiter = ',')]
    pub allowed_origin: Vec<String>,

    /// Audit log: a file to append JSON lines to, or `-` for stderr.
    #[arg(long, env = "PORTHOLE_AUDIT_LOG", default_value = "-")]
    pub audit_log: String,

    /// Most events one socket may send per second (bursts up to twice that); more are refused with
    /// `rate_limited`.
    #[arg(long, env = "PORTHOLE_MAX_EVENTS_PER_SEC", default_value_t = 1000)]
    pub max_events_per_sec: u32,

    /// Failed sign-in attempts allowed per client address per minute; after that the address is refused until
    /// the minute is over.
    #[arg(long, env = "PORTHOLE_MAX_AUTH_FAILURES", default_value_t = 10)]
    pub max_auth_failures: u32,

    /// Most terminals one user may hold at once (the policy's `max_terminals` overrides it).
    #[arg(long, env = "PORTHOLE_MAX_TERMINALS_PER_USER", default_value_t = 64)]
    pub max_terminals_per_user: usize,

    /// Seconds a new connection has to send a complete request header before it is closed; also how long a
    /// request started on an idle keep-alive connection may take to finish its header.
    #[arg(long, env = "PORTHOLE_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub header_timeout_secs: u64,

    /// Seconds a keep-alive connection may stay open with no request in flight (an upgraded WebSocket: with
    /// nothing received, and never less than 50 s, longer than the Engine.IO ping interval plus timeout).
    #[arg(long, env = "PORTHOLE_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub idle_timeout_secs: u64,

    /// Seconds a Socket.IO connection may stay open without signing in (completing its CONNECT).
    #[arg(long, env = "PORTHOLE_SIGN_IN_TIMEOUT_SECS", default_value_t = 5)]
    pub sign_in_timeout_secs: u64,

    /// Most connections open at once (never more than the open-files limit minus 64).
    #[arg(long, env = "PORTHOLE_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Most connections open at once from one client address (never more than a quarter of
    /// --max-connections). Behind a --trusted-proxy, counted by the forwarded address.
    #[arg(long, env = "PORTHOLE_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 64)]
    pub max_connections_per_address: usize,

    /// Most Socket.IO connections from one client address that have not signed in yet.
    #[arg(long, env = "PORTHOLE_MAX_UNAUTHENTICATED_PER_ADDRESS", default_value_t = 8)]
    pub max_unauthenticated_per_address: usize,

    /// Seconds to wait for terminals to close on SIGINT/SIGTERM before exiting anyway.
    #[arg(long, env = "PORTHOLE_SHUTDOWN_TIMEOUT_SECS", default_value_t = 20)]
    pub shutdown_timeout_secs: u64,

    /// Log format (filter with RUST_LOG, default `info`).
    #[arg(long, env = "PORTHOLE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Cluster mode: the Redis that holds the cluster directory, e.g. redis://:PASSWORD@10.0.0.5:6379/0.
    /// Without it, Porthole runs alone.
    #[arg(long, env = "PORTHOLE_CLUSTER_REDIS", hide_env_values = true, requires_all = ["node_id", "advertise", "cluster_secret_file"])]
    pub cluster_redis: Option<String>,

    /// This node's name in the cluster: 1 to 32 of a-z, 0-9, '-' and '_', starting with a letter or digit.
    #[arg(long, env = "PORTHOLE_NODE_ID")]
    pub node_id: Option<String>,

    /// Where the other nodes reach this one, HOST:PORT without a scheme (it uses this server's TLS, if any).
    #[arg(long, env = "PORTHOLE_ADVERTISE")]
    pub advertise: Option<String>,

    /// A file holding the secret (at least 32 bytes) with which nodes sign their requests to each other.
    #[arg(long, env = "PORTHOLE_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,

    /// Cluster mode: seconds a node's directory lease lasts unless renewed (it is renewed every third of
    /// that). A node is declared lost only once its lease expired and its peers cannot reach it.
    #[arg(long, env = "PORTHOLE_CLUSTER_LEASE_TTL", default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=300))]
    pub cluster_lease_ttl: u64,
}

/// An address or a network: a bare address is its own /32 (IPv4) or /128 (IPv6).
fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(ipnet::IpNet::from(ip));
    }
    s.parse::<ipnet::IpNet>()
        .map_err(|_| format!("{s:?} is neither an IP address (127.0.0.1, ::1) nor a CIDR network (10.0.0.0/8)"))
}

/// `--record`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RecordFlag {
    Off,
    Output,
    All,
}

impl RecordFlag {
    pub fn level(self) -> app::protocol::RecordLevel {
        match self {
            RecordFlag::Off => app::protocol::RecordLevel::Off,
            RecordFlag::Output => app::protocol::RecordLevel::Output,
            RecordFlag::All => app::protocol::RecordLevel::All,
        }
    }
}

fn parse_age(s: &str) -> Result<std::time::Duration, String> {
    crate::sandbox::profile::parse_duration(s)
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    crate::sandbox::profile::parse_size(s)
}

impl Config {
    /// Defaults, as if no flag were given (environment ignored); for tests and embedding.
    pub fn defaults() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            docker_hosts: Vec::new(),
            max_terminals_per_client: 32,
            max_terminals: 1024,
            grace_period_secs: 600,
            output_log_bytes: 1024 * 1024,
            token: None,
            jwt_secret_file: None,
            jwt_public_key: None,
            jwt_jwks: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_subject_claim: "sub".into(),
            jwt_groups_claim: "groups".into(),
            jwt_leeway_secs: 30,
            policy: None,
            sandboxes: None,
            state_dir: None,
            max_sandboxes_per_user: 4,
            max_sandbox_creates_per_sec: 2,
            record: RecordFlag::Off,
            recordings_dir: None,
            recordings_max_age: None,
            recordings_max_bytes: None,
            tls_cert: None,
            tls_key: None,
            trusted_proxy: Vec::new(),
            allowed_origin: Vec::new(),
            audit_log: "-".into(),
            max_events_per_sec: 1000,
            max_auth_failures: 10,
            max_terminals_per_user: 64,
            shutdown_timeout_secs: 20,
            header_timeout_secs: 10,
            idle_timeout_secs: 60,
            sign_in_timeout_secs: 5,
            max_connections: 4096,
            max_connections_per_address: 64,
            max_unauthenticated_per_address: 8,
            log_format: LogFormat::Text,
            cluster_redis: None,
            node_id: None,
            advertise: None,
            cluster_secret_file: None,
            cluster_lease_ttl: 15,
        }
    }

    /// Checks the combination of flags; the message is shown to the user as is.
    pub fn validate(&self) -> Result<(), String> {
        if !self.listen.ip().is_loopback() && !self.jwt().configured() && self.token.is_none() {
            return Err(format!(
                "refusing to listen on {}: no authentication is configured for a network-facing server. Give JWT \
                 keys (--jwt-secret-file, --jwt-public-key or --jwt-jwks) and a --policy, or at least set your own \
                 --token; or listen on a loopback address (the default 127.0.0.1:7070).",
                self.listen
            ));
        }
        if let Some(t) = &self.token
            && (t.len() < 16 || t.len() > crate::auth::MAX_TOKEN_LEN || t.chars().any(|c| !c.is_ascii_graphic()))
        {
            return Err("--token must be 16 or more printable ASCII characters without spaces".into());
        }
        if self.token.is_some() && self.jwt().configured() {
            return Err("--token is for local mode; with JWT keys configured, tokens come from your issuer".into());
        }
        for o in &self.allowed_origin {
            if !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/') {
                return Err(format!("--allowed-origin {o:?} must look like https://host[:port], without a path"));
            }
        }
        if self.max_events_per_sec == 0 || self.max_auth_failures == 0 || self.max_terminals_per_user == 0 {
            return Err(
                "--max-events-per-sec, --max-auth-failures and --max-terminals-per-user must be at least 1".into()
            );
        }
        if self.max_sandboxes_per_user == 0 || self.max_sandbox_creates_per_sec == 0 {
            return Err("--max-sandboxes-per-user and --max-sandbox-creates-per-sec must be at least 1".into());
        }
        if self.max_terminals_per_client == 0 || self.max_terminals == 0 {
            return Err("terminal limits must be at least 1".into());
        }
        if self.header_timeout_secs == 0 || self.sign_in_timeout_secs == 0 || self.idle_timeout_secs == 0 {
            return Err(
                "--header-timeout-secs, --idle-timeout-secs and --sign-in-timeout-secs must be at least 1".into()
            );
        }
        if self.max_connections == 0
            || self.max_connections_per_address == 0
            || self.max_unauthenticated_per_address == 0
        {
            return Err("connection limits must be at least 1".into());
        }
        if self.output_log_bytes < 4096 || self.output_log_bytes > 256 * 1024 * 1024 {
            return Err("--output-log-bytes must be between 4096 and 268435456".into());
        }
        self.endpoints()?;
        self.cluster().map(|_| ())
    }

    /// Cluster mode's settings, when `--cluster-redis` is given (the secret file is read here).
    pub fn cluster(&self) -> Result<Option<crate::cluster::Settings>, String> {
        let Some(redis) = &self.cluster_redis else {
            if self.node_id.is_some() || self.advertise.is_some() || self.cluster_secret_file.is_some() {
                return Err(
                    "--node-id, --advertise and --cluster-secret-file are for cluster mode: give --cluster-redis too"
                        .into(),
                );
            }
            return Ok(None);
        };
        let (Some(node), Some(advertise), Some(secret_file)) =
            (&self.node_id, &self.advertise, &self.cluster_secret_file)
        else {
            return Err("cluster mode (--cluster-redis) needs --node-id, --advertise and --cluster-secret-file".into());
        };
        let mut settings = crate::cluster::Settings::new(redis, node, advertise, secret_file, self.tls())?;
        settings.lease_ttl = std::time::Duration::from_secs(self.cluster_lease_ttl);
        Ok(Some(settings))
    }

    /// The Docker hosts, named, in order (see [`crate::docker::hosts`]).
    pub fn endpoints(&self) -> Result<Vec<(String, Endpoint)>, String> {
        use crate::docker::hosts::{DEFAULT_HOST, MAX_HOSTS, valid_name};
        let given: Vec<&str> = self.docker_hosts.iter().map(|h| h.trim()).filter(|h| !h.is_empty()).collect();
        if given.is_empty() {
            return Ok(vec![(DEFAULT_HOST.to_string(), Endpoint::from_env()?)]);
        }
        if given.len() > MAX_HOSTS {
            return Err(format!("--docker-host is given {} times; at most {MAX_HOSTS} hosts", given.len()));
        }
        let mut hosts: Vec<(String, Endpoint)> = Vec::new();
        for h in given {
            let (name, url) = match h.split_once('=') {
                Some((name, url)) if !name.contains("://") => (name, url),
                _ => (DEFAULT_HOST, h),
            };
            if !valid_name(name) {
                return Err(format!(
                    "--docker-host {h:?}: the name {name:?} must be 1 to 32 of a-z, 0-9, - and _, starting with a letter or digit"
                ));
            }
            if hosts.iter().any(|(n, _)| n == name) {
                return Err(format!(
                    "--docker-host: two hosts are named {name:?} (a bare URL is named {DEFAULT_HOST:?})"
                ));
            }
            let endpoint = Endpoint::parse(url).map_err(|e| format!("--docker-host {h:?}: {e}"))?;
            hosts.push((name.to_string(), endpoint));
        }
        Ok(hosts)
    }

    /// Where Porthole keeps its state: `--state-dir`, else `$XDG_DATA_HOME/porthole`, else
    /// `~/.local/share/porthole`, else `./porthole-state`.
    pub fn state_dir(&self) -> PathBuf {
        if let Some(d) = &self.state_dir {
            return d.clone();
        }
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        env("XDG_DATA_HOME")
            .map(|d| d.join("porthole"))
            .or_else(|| env("HOME").map(|h| h.join(".local/share/porthole")))
            .unwrap_or_else(|| PathBuf::from("porthole-state"))
    }

    /// Where recordings go and how long they stay.
    pub fn recordings(&self) -> crate::recording::Settings {
        crate::recording::Settings {
            dir: self.recordings_dir.clone().unwrap_or_else(|| self.state_dir().join("recordings")),
            default_level: self.record.level(),
            max_age: self.recordings_max_age,
            max_bytes: self.recordings_max_bytes,
        }
    }

    pub fn jwt(&self) -> JwtConfig {
        JwtConfig {
            hs256_secret_file: self.jwt_secret_file.clone(),
            public_key_file: self.jwt_public_key.clone(),
            jwks_file: self.jwt_jwks.clone(),
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            subject_claim: self.jwt_subject_claim.clone(),
            groups_claim: self.jwt_groups_claim.clone(),
            leeway_secs: self.jwt_leeway_secs,
        }
    }

    pub fn tls(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// The connection edge's settings, before they are fitted to the open-files limit.
    pub fn edge(&self) -> crate::http::conn::EdgeLimits {
        use std::time::Duration;
        crate::http::conn::EdgeLimits {
            header_timeout: Duration::from_secs(self.header_timeout_secs),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            sign_in_timeout: Duration::from_secs(self.sign_in_timeout_secs),
            max_connections: self.max_connections,
            max_per_address: self.max_connections_per_address,
            max_unauthenticated_per_address: self.max_unauthenticated_per_address,
            trusted_proxies: self.trusted_proxy.clone(),
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            per_client: self.max_terminals_per_client,
            per_user: self.max_terminals_per_user,
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
    fn remote_listen_needs_configured_authentication() {
        let mut c = Config::defaults();
        assert!(c.validate().is_ok());
        c.listen = "0.0.0.0:7070".parse().unwrap();
        assert!(c.validate().unwrap_err().contains("no authentication is configured"));
        c.jwt_secret_file = Some("/etc/porthole/secret".into());
        assert!(c.validate().is_ok());
        c.token = Some("a-token-of-enough-length".into());
        assert!(c.validate().unwrap_err().contains("local mode"));
        c.jwt_secret_file = None;
        assert!(c.validate().is_ok());
        c.token = Some("short".into());
        assert!(c.validate().unwrap_err().contains("16"));
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks() {
        let c = Config::try_parse_from(["porthole", "--trusted-proxy", "127.0.0.1,::1,10.0.0.0/8"]).unwrap();
        let nets: Vec<String> = c.trusted_proxy.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["127.0.0.1/32", "::1/128", "10.0.0.0/8"]);
        let e = Config::try_parse_from(["porthole", "--trusted-proxy", "localhost"]).unwrap_err().to_string();
        assert!(e.contains("neither an IP address"), "{e}");
    }

    #[test]
    fn flags_have_env_equivalents_and_defaults() {
        let c = Config::try_parse_from(["porthole", "--max-terminals", "3", "--docker-host", "tcp://h:1"]).unwrap();
        assert_eq!(c.max_terminals, 3);
        assert_eq!(c.endpoints(), Ok(vec![("local".to_string(), Endpoint::Tcp("h:1".into()))]));
        assert!(Config::try_parse_from(["porthole", "--docker-host", "ssh://x"]).unwrap().validate().is_err());
    }

    #[test]
    fn docker_hosts_are_named_unique_and_valid() {
        let parse = |args: &[&str]| {
            let mut all = vec!["porthole"];
            all.extend_from_slice(args);
            Config::try_parse_from(all).unwrap().endpoints()
        };
        let two = parse(&["--docker-host", "unix:///a.sock", "--docker-host", "edge-2=tcp://h:2"]).unwrap();
        assert_eq!(
            two,
            [
                ("local".to_string(), Endpoint::Unix("/a.sock".into())),
                ("edge-2".to_string(), Endpoint::Tcp("h:2".into()))
            ]
        );
        // The environment's form: comma-separated.
        let listed = parse(&["--docker-host", "a=unix:///a.sock,b=unix:///b.sock"]).unwrap();
        assert_eq!(listed.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let err = parse(&["--docker-host", "unix:///a.sock", "--docker-host", "unix:///b.sock"]).unwrap_err();
        assert!(err.contains("two hosts are named \"local\""), "{err}");
        let err = parse(&["--docker-host", "Big=unix:///a.sock"]).unwrap_err();
        assert!(err.contains("must be 1 to 32"), "{err}");
        let err = parse(&["--docker-host", "a=ssh://x"]).unwrap_err();
        assert!(err.starts_with("--docker-host \"a=ssh://x\""), "{err}");
        let many: Vec<String> = (0..17).map(|i| format!("h{i}=unix:///s{i}")).collect();
        let err = parse(&["--docker-host", &many.join(",")]).unwrap_err();
        assert!(err.contains("at most 16"), "{err}");
    }

    #[test]
    fn cluster_flags_come_together_and_are_checked() {
        let dir = std::env::temp_dir().join(format!("porthole-cluster-flags-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (good, short) = (dir.join("good"), dir.join("short"));
        std::fs::write(&good, "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::write(&short, "too-short\n").unwrap();
        let (good, short) = (good.display().to_string(), short.display().to_string());
        let parse = |args: &[&str]| {
            let mut all = vec!["porthole"];
            all.extend_from_slice(args);
            Config::try_parse_from(all).map_err(|e| e.to_string()).and_then(|c| c.cluster())
        };
        let full = |redis: &str, node: &str, advertise: &str, secret: &str| {
            parse(&[
                "--cluster-redis",
                redis,
                "--node-id",
                node,
                "--advertise",
                advertise,
                "--cluster-secret-file",
                secret,
            ])
        };
        assert!(parse(&[]).unwrap().is_none(), "alone by default");
        let s = full("redis://:pw@10.0.0.5:6379/0", "n-1", "10.0.0.7:7070", &good).unwrap().unwrap();
        assert_eq!((s.node.as_str(), s.advertise.as_str(), s.scheme), ("n-1", "10.0.0.7:7070", "http"));
        assert_eq!(s.secret, b"0123456789abcdef0123456789abcdef", "the trailing newline is not part of the secret");
        assert!(!format!("{s:?}").contains("pw"), "the Redis password is never printed");
        // Each of the others is required with --cluster-redis (clap says so), and none without it.
        assert!(parse(&["--cluster-redis", "redis://h/"]).unwrap_err().contains("--node-id"));
        assert!(parse(&["--node-id", "a"]).unwrap_err().contains("give --cluster-redis too"));
        for (args, says) in [
            (("http://h:6379", "a", "h:1", good.as_str()), "redis:// URL"),
            (("redis://h/", "A", "h:1", good.as_str()), "--node-id \"A\""),
            (("redis://h/", "a", "http://h:1", good.as_str()), "without a scheme"),
            (("redis://h/", "a", "h", good.as_str()), "HOST:PORT"),
            (("redis://h/", "a", "h:0", good.as_str()), "HOST:PORT"),
            (("redis://h/", "a", "h:1", short.as_str()), "at least 32"),
            (("redis://h/", "a", "h:1", "/nonexistent/secret"), "cannot read --cluster-secret-file"),
        ] {
            let err = full(args.0, args.1, args.2, args.3).unwrap_err();
            assert!(err.contains(says), "{args:?}: {err}");
        }
        // The lease: 15 s unless given, 3 to 300.
        assert_eq!(s.lease_ttl, std::time::Duration::from_secs(15));
        let with_ttl = |ttl: &str| {
            let cluster = ["--cluster-redis", "redis://h/", "--node-id", "a", "--advertise", "h:1"];
            parse(&[&cluster[..], &["--cluster-secret-file", &good, "--cluster-lease-ttl", ttl]].concat())
        };
        assert_eq!(with_ttl("3").unwrap().unwrap().lease_ttl, std::time::Duration::from_secs(3));
        for bad in ["2", "301", "x"] {
            assert!(with_ttl(bad).unwrap_err().contains("--cluster-lease-ttl"), "{bad}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
