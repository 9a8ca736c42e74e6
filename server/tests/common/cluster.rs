//! Cluster mode's test bed: a `redis-server` of the test's own (Debian's, without persistence, on a free port),
//! the shared secret, and nodes in this process.

use std::process::{Child, Command, Stdio};

use porthole_server::RunningServer;

use super::{eventually, start_server, tempdir, test_config};

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether a Redis on `port` answers `PING` (RESP spoken by hand: the harness is shared by crates without the
/// `redis` crate).
async fn pong(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return false };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    matches!(tokio::time::timeout(std::time::Duration::from_secs(1), s.read_exact(&mut buf)).await, Ok(Ok(_)))
        && &buf == b"+PONG\r\n"
}

/// A `redis-server` of our own, without persistence.
pub struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    pub async fn start() -> Redis {
        let mut r = Redis { port: free_port(), child: None };
        r.restart().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub async fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/testbed.sh installs it)");
        self.child = Some(child);
        let port = self.port;
        eventually("redis-server answers", || async move { pong(port).await }).await;
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

pub const SECRET: &str = "cluster-secret-for-the-tests-0123456789abcdef";

pub fn secret_file() -> std::path::PathBuf {
    let path = tempdir("cluster-secret").join("secret");
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    path
}

/// A node of the cluster on `redis`, with its audit log at the returned path.
pub async fn node(
    id: &str,
    redis: &Redis,
    tweak: impl FnOnce(&mut porthole_server::config::Config),
) -> (RunningServer, std::path::PathBuf) {
    let mut c = test_config();
    let port = free_port();
    c.listen = format!("127.0.0.1:{port}").parse().unwrap();
    c.cluster_redis = Some(redis.url());
    c.node_id = Some(id.into());
    c.advertise = Some(format!("127.0.0.1:{port}"));
    c.cluster_secret_file = Some(secret_file());
    let audit = tempdir("cluster-audit").join("audit.log");
    c.audit_log = audit.display().to_string();
    tweak(&mut c);
    (start_server(c).await, audit)
}
