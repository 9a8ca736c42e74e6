//! The Content-Security-Policy sent with every response ([`header_value`]). A web terminal is a shell inside a
//! page: one injected script anywhere (a container name, a terminal title, a user name from the identity
//! provider) would type into it. The policy makes such an injection inert even if escaping fails somewhere:
//! scripts run only from this server's own files, never inline or from `eval`, and the page talks only to
//! its own origin.

use std::sync::LazyLock;

use axum::http::HeaderValue;

/// The hash sources (`sha256-<base64>`, space-separated) of the embedded `index.html`'s inline scripts: the
/// import map and Trunk's loader. `build.rs` computes them from the very file it embeds, because the loader
/// names content-hashed files and so changes with every UI build. Empty for the placeholder page.
const INLINE_SCRIPT_HASHES: &str = env!("PORTHOLE_CSP_SCRIPT_HASHES");

/// The policy for a page whose inline scripts have the hash sources `script_hashes`.
fn policy(script_hashes: &str) -> String {
    // 'wasm-unsafe-eval' lets the page compile WebAssembly (the UI is wasm); it allows no JavaScript eval.
    let mut script_src = String::from("'self' 'wasm-unsafe-eval'");
    for hash in script_hashes.split_ascii_whitespace() {
        script_src.push_str(" '");
        script_src.push_str(hash);
        script_src.push('\'');
    }
    let directives: [(&str, &str); 11] = [
        // Whatever is not named below (frames, workers, media, ...) is refused.
        ("default-src", "'none'"),
        ("script-src", &script_src),
        // 'unsafe-inline' for styles only: xterm.js injects <style> elements for its theme and cell sizes and
        // sets style attributes, with contents computed at run time (no hash can cover them, and it takes no
        // nonce). Styles cannot run script; the cost is that injected markup could restyle the page.
        ("style-src", "'self' 'unsafe-inline'"),
        // data: for the inline SVG favicon in index.html.
        ("img-src", "'self' data:"),
        ("font-src", "'self'"),
        // The page's own origin only: the Socket.IO connection (CSP Level 3 lets 'self' match ws:/wss: on
        // the same host and port), the wasm fetch and the server functions.
        ("connect-src", "'self'"),
        ("manifest-src", "'self'"),
        ("object-src", "'none'"),
        // Nobody may frame the terminal (clickjacking); X-Frame-Options says the same to older browsers.
        ("frame-ancestors", "'none'"),
        // No <base> may redirect the relative URLs of scripts and links.
        ("base-uri", "'none'"),
        // The UI's only form (sign-in) is handled in the page and never submitted; an injected form must not
        // post anywhere (a `?token=` form would sign the victim in as someone else).
        ("form-action", "'none'"),
    ];
    directives.map(|(name, value)| format!("{name} {value}")).join("; ")
}

/// The `Content-Security-Policy` header value, built once per process.
pub fn header_value() -> HeaderValue {
    static VALUE: LazyLock<HeaderValue> = LazyLock::new(|| {
        HeaderValue::from_str(&policy(INLINE_SCRIPT_HASHES))
            .expect("the policy is printable ASCII: fixed text plus base64 hashes from build.rs")
    });
    VALUE.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directive(policy: &str, name: &str) -> Option<String> {
        policy.split("; ").find_map(|d| d.strip_prefix(name)?.strip_prefix(' ').map(str::to_string))
    }

    #[test]
    fn hashes_join_script_src_and_nothing_else_runs_inline() {
        let p = policy("sha256-AAAA sha256-BBBB");
        assert_eq!(
            directive(&p, "script-src").as_deref(),
            Some("'self' 'wasm-unsafe-eval' 'sha256-AAAA' 'sha256-BBBB'")
        );
        assert_eq!(directive(&policy(""), "script-src").as_deref(), Some("'self' 'wasm-unsafe-eval'"));
        for (name, value) in [
            ("default-src", "'none'"),
            ("connect-src", "'self'"),
            ("object-src", "'none'"),
            ("frame-ancestors", "'none'"),
            ("base-uri", "'none'"),
            ("form-action", "'none'"),
        ] {
            assert_eq!(directive(&p, name).as_deref(), Some(value), "{name}");
        }
    }

    #[test]
    fn the_built_header_is_valid_and_strict() {
        let value = header_value();
        let text = value.to_str().expect("ASCII header");
        assert_eq!(text, policy(INLINE_SCRIPT_HASHES));
        let script_src = directive(text, "script-src").expect("script-src");
        let sources: Vec<&str> = script_src.split(' ').collect();
        assert_eq!(sources[..2], ["'self'", "'wasm-unsafe-eval'"]);
        // Every other source is a well-formed SHA-256 hash: 32 bytes are 44 base64 characters with padding.
        for hash in &sources[2..] {
            let b64 = hash.strip_prefix("'sha256-").and_then(|h| h.strip_suffix('\'')).expect("hash source");
            assert_eq!(b64.len(), 44, "{hash}");
            assert!(
                b64.ends_with('=')
                    && b64.trim_end_matches('=').bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
            );
        }
        assert_eq!(sources.len() - 2, INLINE_SCRIPT_HASHES.split_ascii_whitespace().count());
    }
}
