//! Porthole's shared crate: the one place the wire vocabulary lives.
//!
//! Everything that crosses the wire between a browser, the server, a native client or a test is defined in
//! [`protocol`] (Socket.IO events and REST) and [`api`] (Leptos server functions), so both ends are
//! type-checked against each other. [`protocol`] needs no feature and no Leptos, so a native client builds
//! only what it speaks; [`api`] needs the `api` feature (the browser UI), and its server side `ssr`.

#[cfg(feature = "api")]
pub mod api;
pub mod cast;
pub mod protocol;
