//! Embeds the browser UI built by Trunk (`dist/` at the workspace root) into the binary, so one `porthole`
//! file serves everything. Without a built UI (e.g. a server-only `cargo test`), a placeholder page saying
//! how to build it is embedded instead.

use std::path::{Path, PathBuf};
use std::{env, fs};

fn main() {
    let dist = Path::new("../dist");
    println!("cargo::rerun-if-changed=../dist");
    println!("cargo::rerun-if-env-changed=PORTHOLE_DIST");
    let dir = match env::var_os("PORTHOLE_DIST") {
        Some(d) => PathBuf::from(d),
        None if dist.join("index.html").is_file() => dist.to_path_buf(),
        None => {
            println!("cargo::warning=dist/ has no built UI; embedding a placeholder (run `trunk build --release`)");
            let p = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("placeholder");
            fs::create_dir_all(&p).expect("create placeholder dir");
            fs::write(p.join("index.html"), PLACEHOLDER).expect("write placeholder page");
            p
        }
    };
    memory_serve::load_directory_with_embed(dir, true);
}

const PLACEHOLDER: &str = "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>Porthole</title>\
<body style=\"font:15px system-ui;max-width:40rem;margin:3rem auto\"><h1>Porthole</h1>\
<p>This binary was built without its browser UI. Build it with <code>trunk build --release</code> and then \
<code>cargo build --release</code> (or run <code>scripts/run.sh</code>). The API is up: \
<a href=\"/healthz\">/healthz</a>, <a href=\"/api/v1/containers\">/api/v1/containers</a>.</p></body></html>";
