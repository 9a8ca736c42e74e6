//! HTTP transport: the REST API and `/healthz`, over the same service layer as the socket.

use app::protocol::{ErrorCode, TerminalId, rest};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::error::ServiceError;
use crate::state::AppState;

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        (self.status(), Json(self.reply())).into_response()
    }
}

/// The REST routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route(rest::HEALTHZ, get(healthz))
        .route(rest::CONTAINERS, get(containers))
        .route(rest::TERMINALS, get(terminals))
        .route(rest::TERMINAL, get(terminal).delete(close_terminal))
        .fallback(not_found)
        .with_state(state)
}

async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
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
