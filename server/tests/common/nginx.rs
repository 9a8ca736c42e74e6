//! nginx (Debian's) in front of three nodes, with the configuration of `docs/deploy.md` as written: only the
//! nodes' addresses and the ports are replaced. Shared by the balancer tests and the benchmark (which includes
//! this file), so it needs nothing of the test harness.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A fresh directory for one nginx's configuration, logs and temp files.
fn scratch_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("porthole-nginx-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The addresses the documented configuration names for the three nodes.
const DOC_NODES: [&str; 3] = ["10.0.0.11:7070", "10.0.0.12:7070", "10.0.0.13:7070"];

/// nginx with the configuration of `docs/deploy.md`, on three ports: the cookie-sticky site (the doc's
/// `listen 80`), the address-sticky one (`listen 81`), and, added by the test, one with no stickiness at all.
pub struct Nginx {
    pub dir: PathBuf,
    child: Option<Child>,
    pub cookie: u16,
    pub address: u16,
    pub plain: u16,
}

/// The `n`th ```` ```nginx ```` block of `docs/deploy.md`.
fn doc_block(n: usize) -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/deploy.md")).unwrap();
    let block = doc.split("```nginx\n").nth(n + 1).expect("docs/deploy.md has its nginx blocks");
    block.split("```").next().unwrap().to_string()
}

impl Nginx {
    pub fn start(nodes: &[SocketAddr; 3]) -> Nginx {
        let dir = scratch_dir();
        let (cookie, address, plain) = (free_port(), free_port(), free_port());
        let include = dir.join("porthole_proxy.conf");
        std::fs::write(&include, doc_block(1)).unwrap();
        let mut site = doc_block(0);
        for (doc, node) in DOC_NODES.iter().zip(nodes) {
            site = site.replace(doc, &node.to_string());
        }
        assert!(site.contains("listen 80;") && site.contains("listen 81;"), "the doc's sites moved:\n{site}");
        site = site
            .replace("listen 80;", &format!("listen 127.0.0.1:{cookie};"))
            .replace("listen 81;", &format!("listen 127.0.0.1:{address};"))
            .replace("/etc/nginx/porthole_proxy.conf", &include.display().to_string());
        let d = dir.display();
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\nevents {{ worker_connections 8192; }}\n\
             http {{\n access_log {d}/access.log;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n{site}\n\
             server {{ listen 127.0.0.1:{plain}; location / {{ proxy_pass http://porthole; include {}; }} }}\n}}\n",
            include.display()
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let mut n = Nginx { dir, child: None, cookie, address, plain };
        n.restart();
        n
    }

    pub fn restart(&mut self) {
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .arg("-e")
            .arg(self.dir.join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nginx (scripts/testbed.sh installs it)");
        self.child = Some(child);
        for port in [self.cookie, self.address, self.plain] {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                    let log = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
                    panic!("nginx exited with {status}: {log}");
                }
                assert!(std::time::Instant::now() < deadline, "nginx does not listen on {port}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Stops nginx the way a restart does (SIGTERM: the master ends its workers, which drop every
    /// connection), and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }

    pub fn url(port: u16) -> String {
        format!("http://127.0.0.1:{port}")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}
