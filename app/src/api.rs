//! Leptos server functions: the request/response data the browser UI needs, type-checked on both ends.
//!
//! In the browser (default features) each function is a stub that POSTs to `/api/fn/<endpoint>`; on the
//! server (`ssr`) the body runs against the [`backend::Backend`] the server puts in the Leptos context, the
//! same service layer the REST API and the socket use.

use leptos::prelude::*;

use crate::protocol::{ContainerSummary, SandboxProfile, TerminalInfo};

/// Where server functions are mounted.
pub const SERVER_FN_PREFIX: &str = "/api/fn";

#[cfg(feature = "ssr")]
pub mod backend {
    //! The server side of the server functions.
    use std::sync::Arc;

    use crate::protocol::{ContainerSummary, ErrorBody, SandboxProfile, TerminalInfo};

    /// What the server functions need from the server; implemented by its service layer.
    #[async_trait::async_trait]
    pub trait Backend: Send + Sync + 'static {
        async fn containers(&self) -> Result<Vec<ContainerSummary>, ErrorBody>;
        async fn terminals(&self) -> Vec<TerminalInfo>;
        fn sandbox_profiles(&self) -> Vec<SandboxProfile>;
    }

    /// The context value the server provides for each server function call.
    pub type SharedBackend = Arc<dyn Backend>;
}

#[cfg(feature = "ssr")]
fn backend() -> Result<backend::SharedBackend, ServerFnError> {
    use_context::<backend::SharedBackend>().ok_or_else(|| ServerFnError::new("server functions have no backend"))
}

/// Every container the daemon has, running ones first. Fails with the user-facing reason (e.g. the Docker
/// daemon is not answering).
#[server(prefix = "/api/fn", endpoint = "list_containers")]
pub async fn list_containers() -> Result<Vec<ContainerSummary>, ServerFnError> {
    backend()?.containers().await.map_err(|e| ServerFnError::new(e.message))
}

/// Every open terminal.
#[server(prefix = "/api/fn", endpoint = "list_terminals")]
pub async fn list_terminals() -> Result<Vec<TerminalInfo>, ServerFnError> {
    Ok(backend()?.terminals().await)
}

/// The sandbox profiles the user may create.
#[server(prefix = "/api/fn", endpoint = "list_sandbox_profiles")]
pub async fn list_sandbox_profiles() -> Result<Vec<SandboxProfile>, ServerFnError> {
    Ok(backend()?.sandbox_profiles())
}
