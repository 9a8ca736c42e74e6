//! HTTP transport: the REST API, `/healthz`, Leptos server functions and the embedded browser UI, over the
//! same service layer as the socket.

use app::protocol::{ErrorCode, TerminalId, rest};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::error::ServiceError;
use crate::state::AppState;

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        (self.status(), Json(self.reply())).into_response()
    }
}

/// Everything served over plain HTTP: REST, server functions, the UI's static files.
pub fn router(state: AppState) -> Router {
    Router::new().merge(rest_router(state.clone())).merge(server_fn_router(state)).merge(static_files())
}

/// The browser UI, embedded at build time (see `build.rs`): correct MIME types, ETag/304, brotli/gzip.
fn static_files() -> Router {
    // `into_router` leaks the asset table by design; build it once per process.
    static FILES: std::sync::LazyLock<Router> = std::sync::LazyLock::new(|| {
        memory_serve::load!()
            .index_file(Some("/index.html"))
            .html_cache_control(memory_serve::CacheControl::NoCache)
            .into_router()
    });
    FILES.clone()
}

/// Leptos server functions (`app::api`), with the service layer in their context.
fn server_fn_router(state: AppState) -> Router {
    let backend: app::api::backend::SharedBackend = std::sync::Arc::new(state);
    Router::new().route(
        &format!("{}/{{*name}}", app::api::SERVER_FN_PREFIX),
        axum::routing::any(move |req: axum::extract::Request| {
            let backend = backend.clone();
            async move {
                leptos_axum::handle_server_fns_with_context(
                    move || leptos::prelude::provide_context(backend.clone()),
                    req,
                )
                .await
            }
        }),
    )
}

/// The REST routes.
fn rest_router(state: AppState) -> Router {
    Router::new()
        .route(rest::HEALTHZ, get(healthz))
        .route(rest::CONTAINERS, get(containers))
        .route(rest::TERMINALS, get(terminals))
        .route(rest::TERMINAL, get(terminal).delete(close_terminal))
        .fallback(not_found)
        .with_state(state)
}

async fn healthz(State(state): State<AppState>) -> Response {
    match state.health().await {
        Ok(h) => Json(h).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn containers(State(state): State<AppState>) -> Response {
    match state.containers().await {
        Ok(list) => Json(list).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn terminals(State(state): State<AppState>) -> Response {
    Json(state.terminals()).into_response()
}

async fn terminal(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.terminal(&TerminalId(id)) {
        Ok(t) => Json(t).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn close_terminal(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.close_terminal(&TerminalId(id)).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn not_found() -> Response {
    ServiceError::new(ErrorCode::NotFound, "no such route").into_response()
}
