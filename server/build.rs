//! Embeds the browser UI built by Trunk (`dist/` at the workspace root) into the binary, so one `porthole`
//! file serves everything. Without a built UI (e.g. a server-only `cargo test`), a placeholder page saying
//! how to build it is embedded instead.
//!
//! It also hashes the embedded page's inline scripts for the Content-Security-Policy (`src/http/csp.rs`):
//! Trunk writes its loader (`<script type="module">import init ...`) into `index.html` with hashed file names,
//! so the hash changes with every UI build and can only be known here. The hashes reach the crate as
//! `PORTHOLE_CSP_SCRIPT_HASHES`: `sha256-<base64>` tokens separated by spaces, empty for the placeholder.

use std::path::{Path, PathBuf};
use std::{env, fs, io};

use base64::Engine as _;
use sha2::{Digest, Sha256};

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
    let index = dir.join("index.html");
    println!("cargo::rerun-if-changed={}", index.display());
    let page = match fs::read_to_string(&index) {
        Ok(page) => page,
        // No page, no inline script to allow.
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => panic!("cannot read {} to hash its inline scripts: {e}", index.display()),
    };
    let hashes: Vec<String> = inline_scripts(&page).iter().map(|body| sha256_source(body)).collect();
    println!("cargo::rustc-env=PORTHOLE_CSP_SCRIPT_HASHES={}", hashes.join(" "));
    memory_serve::load_directory_with_embed(dir, true);
}

/// The CSP hash source of a script body (without its quotes): what the browser compares against is the
/// SHA-256 of the element's text as UTF-8, base64 with padding.
fn sha256_source(body: &str) -> String {
    format!("sha256-{}", base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body.as_bytes())))
}

/// The bodies of `html`'s inline `<script>` elements (those without a `src` attribute: the import map and
/// Trunk's loader), in document order. This reads our own build output, not arbitrary HTML: comments are
/// skipped, attribute values may be quoted, and a body ends at the first `</script`, as in the HTML tokenizer.
fn inline_scripts(html: &str) -> Vec<String> {
    // ASCII lowercasing keeps every byte offset, so positions found in `lower` index `html` too.
    let lower = html.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let mut scripts = Vec::new();
    let mut at = 0;
    while let Some(found) = lower[at..].find('<') {
        let start = at + found;
        let rest = &lower[start..];
        if rest.starts_with("<!--") {
            at = rest.find("-->").map_or(lower.len(), |end| start + end + 3);
            continue;
        }
        let after_name = start + "<script".len();
        let is_script = rest.starts_with("<script")
            && bytes.get(after_name).is_some_and(|b| b.is_ascii_whitespace() || *b == b'>' || *b == b'/');
        if !is_script {
            at = start + 1;
            continue;
        }
        let (body_start, has_src) = scan_start_tag(bytes, after_name);
        let body_end = lower[body_start..].find("</script").map_or(lower.len(), |end| body_start + end);
        if !has_src {
            scripts.push(normalise_newlines(&html[body_start..body_end]));
        }
        at = body_end;
    }
    scripts
}

/// Reads a start tag's attributes from `i` (just after the tag name) to its `>`: where the element's content
/// begins, and whether one of the attributes is `src`.
fn scan_start_tag(b: &[u8], mut i: usize) -> (usize, bool) {
    let mut has_src = false;
    loop {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
            i += 1;
        }
        if i >= b.len() {
            return (b.len(), has_src);
        }
        if b[i] == b'>' {
            return (i + 1, has_src);
        }
        let name_start = i;
        while i < b.len() && !(b[i].is_ascii_whitespace() || matches!(b[i], b'=' | b'>' | b'/')) {
            i += 1;
        }
        has_src |= &b[name_start..i] == b"src";
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b.get(i) != Some(&b'=') {
            continue;
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        match b.get(i) {
            Some(&q @ (b'"' | b'\'')) => {
                i += 1;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
                i += 1;
            }
            _ => {
                while i < b.len() && !(b[i].is_ascii_whitespace() || b[i] == b'>') {
                    i += 1;
                }
            }
        }
    }
}

/// The HTML parser turns CRLF and lone CR into LF before a script's text exists, so the hash must be of that.
fn normalise_newlines(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\r', "\n")
}

const PLACEHOLDER: &str = "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>Porthole</title>\
<body style=\"font:15px system-ui;max-width:40rem;margin:3rem auto\"><h1>Porthole</h1>\
<p>This binary was built without its browser UI. Build it with <code>trunk build --release</code> and then \
<code>cargo build --release</code> (or run <code>scripts/run.sh</code>). The API is up: \
<a href=\"/healthz\">/healthz</a>, <a href=\"/api/v1/containers\">/api/v1/containers</a>.</p></body></html>";
