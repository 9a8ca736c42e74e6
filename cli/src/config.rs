//! Which server to talk to and how: flags and environment first, then the config file `login` writes
//! (`$XDG_CONFIG_HOME/porthole/config.toml`, default `~/.config/porthole/config.toml`, mode 0600).
//! TLS is verified against the system's roots, or only against `ca_file`'s.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use app::protocol::ErrorReply;
use serde::{Deserialize, Serialize};

use crate::{Failure, ServerArgs};

/// How long a REST request may take (a recording download streams past it).
const REST_TIMEOUT: Duration = Duration::from_secs(30);

/// The config file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub url: Option<String>,
    pub token: Option<String>,
    pub ca_file: Option<PathBuf>,
}

/// Where the config file is.
pub fn config_path() -> Result<PathBuf, Failure> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => PathBuf::from(home).join(".config"),
            None => return Err(Failure::refused("config", "neither XDG_CONFIG_HOME nor HOME is set")),
        },
    };
    Ok(base.join("porthole").join("config.toml"))
}

fn read_config(path: &Path) -> Result<ConfigFile, Failure> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text)
            .map_err(|e| Failure::refused("config", format!("{} is not a valid config file: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
        Err(e) => Err(Failure::refused("config", format!("cannot read {}: {e}", path.display()))),
    }
}

/// Writes the config file (its directory 0700, the file 0600, replaced whole).
pub fn write_config(path: &Path, config: &ConfigFile) -> Result<(), Failure> {
    let fail = |e: std::io::Error| Failure::refused("config", format!("cannot write {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(fail)?;
    }
    let text = toml::to_string(config).map_err(|e| Failure::refused("config", e))?;
    let tmp = path.with_extension("toml.tmp");
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(fail)?;
    f.write_all(text.as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// A server to talk to, with its credential and TLS settings.
///
/// TLS is set up only for an `https://` URL, once, for both the Socket.IO connection and REST; the REST client
/// is built on first use. (Loading the system's roots takes tens of milliseconds, twice as much when each client
/// loaded its own: most of the time an `exec` of a short command took before it connected.)
#[derive(Debug, Clone)]
pub struct Server {
    pub url: String,
    pub token: String,
    /// For an `https://` URL: the system's roots, or only `ca_file`'s.
    pub tls: Option<native_tls::TlsConnector>,
    http: std::sync::OnceLock<reqwest::Client>,
}

impl Server {
    /// Flags and environment first, then the config file.
    pub fn resolve(args: &ServerArgs) -> Result<Server, Failure> {
        let file = read_config(&config_path()?)?;
        let url = args.url.clone().or(file.url).ok_or_else(|| {
            Failure::refused(
                "no_server",
                "no server given: pass --url (or PORTHOLE_URL), or run `porthole-cli login URL`",
            )
        })?;
        let token = args.token.clone().or(file.token).ok_or_else(|| {
            Failure::refused(
                "unauthenticated",
                "no token given: pass --token (or PORTHOLE_TOKEN), or run `porthole-cli login`",
            )
        })?;
        Server::new(&url, token, args.ca_file.clone().or(file.ca_file).as_deref())
    }

    pub fn new(url: &str, token: String, ca_file: Option<&Path>) -> Result<Server, Failure> {
        let url = url.trim_end_matches('/').to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Failure::refused("invalid_url", format!("{url:?} must start with http:// or https://")));
        }
        // A CA file is read and checked even for an http:// URL, so a wrong one is told at once.
        let ca = match ca_file {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| Failure::refused("ca_file", format!("cannot read {}: {e}", path.display())))?;
                let cert = native_tls::Certificate::from_pem(&pem)
                    .map_err(|e| Failure::refused("ca_file", format!("{}: {e}", path.display())))?;
                Some(cert)
            }
            None => None,
        };
        let tls = if url.starts_with("https://") {
            let mut builder = native_tls::TlsConnector::builder();
            if let Some(cert) = ca {
                builder.disable_built_in_roots(true).add_root_certificate(cert);
            }
            Some(builder.build().map_err(|e| Failure::refused("tls", e))?)
        } else {
            None
        };
        Ok(Server { url, token, tls, http: std::sync::OnceLock::new() })
    }

    /// The REST client (built on first use, with the TLS settings above).
    pub fn http(&self) -> Result<&reqwest::Client, Failure> {
        if let Some(c) = self.http.get() {
            return Ok(c);
        }
        let mut builder = reqwest::Client::builder().timeout(REST_TIMEOUT);
        builder = match &self.tls {
            Some(tls) => builder.use_preconfigured_tls(tls.clone()),
            None => builder.use_native_tls(),
        };
        let client = builder.build().map_err(|e| Failure::refused("tls", e))?;
        Ok(self.http.get_or_init(|| client))
    }

    /// `GET path` (with a query), parsed; Porthole's refusals become failures naming their code.
    pub async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, Failure> {
        let res = self.send(self.http()?.get(format!("{}{path}", self.url)).query(query)).await?;
        res.json().await.map_err(|e| Failure::refused("protocol", format!("unexpected answer from {path}: {e}")))
    }

    /// Sends a request with the token; a non-2xx answer becomes a failure naming its error code.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, Failure> {
        let res = req.bearer_auth(&self.token).send().await.map_err(|e| self.unreachable(&e))?;
        if res.status().is_success() {
            return Ok(res);
        }
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        Err(match serde_json::from_str::<ErrorReply>(&body) {
            Ok(r) => Failure::refused(r.error.code.as_str(), r.error.message),
            Err(_) => Failure::refused("internal", format!("the server answered {status}")),
        })
    }

    /// The failure for a server that could not be reached, naming why (refused, TLS, DNS).
    pub fn unreachable(&self, e: &reqwest::Error) -> Failure {
        let chain = error_chain(e);
        let lower = chain.to_lowercase();
        let code = if lower.contains("certificate") || lower.contains("tls") || lower.contains("ssl") {
            "tls_error"
        } else {
            "unreachable"
        };
        Failure::refused(code, format!("cannot reach {}: {chain}", self.url))
    }

    /// Why the Socket.IO connection failed, told apart with a REST request (TLS, refused, DNS).
    pub async fn diagnose(&self, socket_error: &str) -> Failure {
        let http = match self.http() {
            Ok(h) => h,
            Err(f) => return f,
        };
        match http.get(format!("{}{}", self.url, app::protocol::rest::HEALTHZ)).send().await {
            Err(e) => self.unreachable(&e),
            Ok(_) => Failure::refused("unreachable", format!("cannot connect to {}: {socket_error}", self.url)),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
