//! Porthole's shared crate: the one place the wire vocabulary lives.
//!
//! Everything that crosses the wire between a browser, the server, a native client or a test is defined in
//! [`protocol`] (Socket.IO events and REST) and [`api`] (Leptos server functions), so both ends are
//! type-checked against each other. The default feature set compiles to `wasm32-unknown-unknown`;
//! server-only code sits behind the `ssr` feature.

pub mod api;
pub mod protocol;
