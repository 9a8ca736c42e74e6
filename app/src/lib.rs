//! Porthole's shared crate: the one place the wire vocabulary lives.
//!
//! Everything that crosses the wire between a browser, the server, a native client or a test is defined in
//! [`protocol`], so both ends are type-checked against each other. The default feature set compiles to
//! `wasm32-unknown-unknown`; server-only helpers sit behind the `ssr` feature.

pub mod protocol;
