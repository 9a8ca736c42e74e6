//! REST for sandboxes and container lifecycle actions: thin translations to the service door.

use app::protocol::{ContainerAction, NewSandbox, rest};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};

use crate::error::ServiceError;
use crate::state::{Action, AppState, Caller};

/// The routes (authentication is added by the caller).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(rest::SANDBOXES, post(create).get(list))
        .route(rest::SANDBOX, axum::routing::delete(remove))
        .route(rest::SANDBOX_PROFILES, get(profiles))
        .route(rest::CONTAINER_START, post(start))
        .route(rest::CONTAINER_STOP, post(stop))
        .route(rest::CONTAINER_RESTART, post(restart))
}

async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewSandbox>, JsonRejection>,
) -> Response {
    let Json(NewSandbox { profile }) = match body {
        Ok(b) => b,
        Err(e) => return ServiceError::invalid(format!("sandbox body: {}", e.body_text())).into_response(),
    };
    if profile.len() > app::protocol::MAX_PROFILE_NAME_LEN {
        return ServiceError::invalid("profile is too long").into_response();
    }
    match state.create_sandbox(&caller, &profile).await {
        Ok(s) => (StatusCode::CREATED, Json(s)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Response {
    match state.sandboxes(&caller).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn remove(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    match state.remove_sandbox(&caller, &id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn profiles(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Response {
    Json(state.sandbox_profiles(&caller)).into_response()
}

async fn act(state: AppState, caller: Caller, id: String, action: Action) -> Response {
    match state.container_action(&caller, &ContainerAction { container_id: id }, action).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn start(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    act(state, caller, id, Action::Start).await
}

async fn stop(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> Response {
    act(state, caller, id, Action::Stop).await
}

async fn restart(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    act(state, caller, id, Action::Restart).await
}
