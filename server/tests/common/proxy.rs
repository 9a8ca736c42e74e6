//! A unix-socket relay in front of the real Docker daemon that a test can cut and restore, to see what
//! Porthole does when "the daemon" goes away and comes back, without disturbing other tests.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

pub struct DaemonProxy {
    path: PathBuf,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl DaemonProxy {
    /// A proxy socket path in a fresh temp dir; nothing listens until [`DaemonProxy::up`].
    pub fn new() -> DaemonProxy {
        let dir = std::env::temp_dir().join(format!("porthole-proxy-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        DaemonProxy { path: dir.join("docker.sock"), tasks: Arc::new(Mutex::new(Vec::new())) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Starts relaying to /var/run/docker.sock.
    pub fn up(&self) {
        let _ = std::fs::remove_file(&self.path);
        let listener = UnixListener::bind(&self.path).unwrap();
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let relay = tokio::spawn(async move {
                    if let Ok(mut daemon) = UnixStream::connect("/var/run/docker.sock").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut daemon).await;
                    }
                });
                tasks.lock().unwrap().push(relay);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Cuts every relayed connection and stops listening: to Porthole, the daemon is gone.
    pub fn down(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for DaemonProxy {
    fn drop(&mut self) {
        self.down();
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A TCP relay in front of the Porthole server whose connections a test can cut, like a network blip or
/// a proxy's idle timeout: the server sees the transport die, not a polite Socket.IO disconnect.
pub struct TcpCutter {
    addr: std::net::SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl TcpCutter {
    pub async fn to(target: std::net::SocketAddr) -> TcpCutter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let t = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let relay = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                t.lock().unwrap().push(relay);
            }
        });
        TcpCutter { addr, tasks, accept }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops every relayed connection at once (new connections are still relayed).
    pub fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl Drop for TcpCutter {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
