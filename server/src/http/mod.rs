//! HTTP transport: the REST API, `/healthz`, Leptos server functions and the embedded browser UI, over the
//! same service layer as the socket; plus the edge every request passes first ([`guard`]): client address
//! (through trusted proxies only), Origin check, sign-in by `?token=`, security headers.

pub mod csp;

pub mod conn;
pub(crate) mod recordings;
mod sandboxes;
mod tracked;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use app::protocol::{ErrorCode, Login, TerminalId, WhoAmI, rest};
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};

use crate::error::ServiceError;
use crate::state::{AppState, Caller, CallerScope};

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let mut res = (self.status(), Json(self.reply())).into_response();
        if self.status() == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"porthole\""));
        }
        res
    }
}

/// What the edge learned about a request; in the request's extensions (and so in a socket's handshake parts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    /// The client's address: the peer, or for a trusted proxy the nearest untrusted X-Forwarded-For entry.
    pub ip: Option<IpAddr>,
    /// Served over HTTPS (directly, or a trusted proxy says so).
    pub secure: bool,
    /// `scheme://host[:port]` this request was served on, if it named a host.
    pub origin: Option<String>,
}

/// Edge settings.
#[derive(Debug, Clone, Default)]
pub struct Edge {
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub tls: bool,
    /// Origins allowed besides the served one.
    pub allowed_origins: Vec<String>,
}

fn first_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok()?.split(',').next().map(str::trim).filter(|v| !v.is_empty())
}

impl Edge {
    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// `authority` is the request URI's (HTTP/2 sends `:authority` instead of a `Host` header).
    pub fn context(&self, peer: Option<IpAddr>, headers: &HeaderMap, authority: Option<&str>) -> RequestContext {
        let via_proxy = peer.is_some_and(|p| self.trusted(p));
        let mut ip = peer;
        if via_proxy && let Some(xff) = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            let hops: Vec<IpAddr> = xff.split(',').filter_map(|h| h.trim().parse().ok()).collect();
            // The nearest hop that is not one of ours is the client; if all are ours, the farthest.
            ip = hops.iter().rev().find(|h| !self.trusted(**h)).or(hops.first()).copied().or(ip);
        }
        let secure = self.tls
            || (via_proxy
                && first_value(headers, "x-forwarded-proto").is_some_and(|p| p.eq_ignore_ascii_case("https")));
        let host = via_proxy
            .then(|| first_value(headers, "x-forwarded-host"))
            .flatten()
            .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
            .or(authority);
        let origin = host.map(|h| format!("{}://{h}", if secure { "https" } else { "http" }));
        RequestContext { ip, secure, origin }
    }

    fn origin_allowed(&self, origin: &str, ctx: &RequestContext) -> bool {
        ctx.origin.as_deref().is_some_and(|o| o.eq_ignore_ascii_case(origin))
            || self.allowed_origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }
}

/// State of the edge middleware.
#[derive(Debug, Clone)]
pub struct Guard {
    pub state: AppState,
    pub edge: Arc<Edge>,
}

/// Runs before everything else, the Socket.IO layer included.
pub async fn guard(State(g): State<Guard>, mut req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let ctx = g.edge.context(peer, req.headers(), req.uri().authority().map(|a| a.as_str()));
    req.extensions_mut().insert(ctx.clone());
    let path = req.uri().path().to_string();
    let is_socket = path.starts_with("/socket.io");
    let safe_method = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    // Cross-site WebSocket hijacking and CSRF: browsers always send Origin on these; other clients need not.
    if (is_socket || !safe_method)
        && let Some(origin) = req.headers().get(header::ORIGIN)
    {
        let origin = origin.to_str().unwrap_or("");
        if !g.edge.origin_allowed(origin, &ctx) {
            let e = ServiceError::new(
                ErrorCode::OriginNotAllowed,
                format!("requests from origin {origin:?} are not allowed; this server is {:?}", ctx.origin),
            );
            refused_at_edge(&g.state, ctx.ip, if is_socket { "connect" } else { "http" }, &e);
            return with_security_headers(e.into_response(), &ctx);
        }
    }
    if let Some(c) = req.extensions().get::<Arc<conn::ConnShared>>().cloned()
        && let Err(e) = c.attribute(ctx.ip)
    {
        g.state.log_refusal(ctx.ip, None, "connection", &e);
        let mut res = e.into_response();
        res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return with_security_headers(res, &ctx);
    }
    if is_socket {
        req = match socket_edge(&g.state, req, &ctx) {
            Ok(req) => req,
            Err(res) => return with_security_headers(*res, &ctx),
        };
        if req.method() == Method::GET && !req.headers().contains_key(header::UPGRADE) {
            return with_security_headers(polling_sign_in(&g.state, req, next).await, &ctx);
        }
    }
    let res = match token_in_query(&req) {
        Some(token) if req.method() == Method::GET && !is_socket && !path.starts_with("/api/") => {
            sign_in_by_link(&g.state, &token, &path, &ctx).await
        }
        _ => next.run(req).await,
    };
    with_security_headers(res, &ctx)
}

/// Logs and audits a request the edge refused before anyone signed in (so the record has an address, no user).
fn refused_at_edge(state: &AppState, ip: Option<IpAddr>, action: &'static str, e: &ServiceError) {
    state.log_refusal(ip, None, action, e);
    let record = crate::audit::Record {
        action,
        outcome: "denied",
        ip,
        code: Some(e.code.to_string()),
        reason: Some(crate::refusals::clip(&e.message)),
        ..Default::default()
    };
    state.audit_refusal(e, record);
}

fn query_param(req: &Request, name: &str) -> Option<String> {
    let params = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(req.uri()).ok()?;
    params.0.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn token_in_query(req: &Request) -> Option<String> {
    query_param(req, "token")
}

/// Runs a polling `GET` under the sign-in timeout: a handshake starts the session's clock (the sid is read from
/// the answer), and a poll of a session that has not signed in by its deadline is answered with the
/// `connect_error` (`sign_in_timeout`) instead of waiting; socketioxide drops the session a moment later.
async fn polling_sign_in(state: &AppState, req: Request, next: Next) -> Response {
    /// An Engine.IO handshake answer is about 150 bytes.
    const MAX_HANDSHAKE_BYTES: usize = 4096;
    let farewell = || {
        let secs = state.edge().limits().sign_in_timeout.as_secs();
        let body = conn::sign_in_farewell(&format!("did not sign in within {secs} s"));
        ([(header::CONTENT_TYPE, "text/plain; charset=UTF-8")], body).into_response()
    };
    match query_param(&req, "sid") {
        None => {
            let res = next.run(req).await;
            if res.status() != StatusCode::OK {
                return res;
            }
            let (parts, body) = res.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, MAX_HANDSHAKE_BYTES).await else {
                return ServiceError::new(ErrorCode::Internal, "unreadable handshake").into_response();
            };
            let open = bytes.strip_prefix(b"0").and_then(|j| serde_json::from_slice::<serde_json::Value>(j).ok());
            if let Some(sid) = open.as_ref().and_then(|o| o["sid"].as_str()) {
                state.edge().polling_opened(sid);
            }
            Response::from_parts(parts, axum::body::Body::from(bytes))
        }
        Some(sid) => match state.edge().polling_deadline(&sid) {
            None => next.run(req).await,
            Some(deadline) if Instant::now() >= deadline => farewell(),
            Some(deadline) => match tokio::time::timeout_at(deadline.into(), next.run(req)).await {
                Ok(res) => res,
                // The session may have signed in meanwhile (its CONNECT came by POST): then the poll is
                // simply over early, and the client polls again.
                Err(_) if state.edge().polling_deadline(&sid).is_none() => StatusCode::OK.into_response(),
                Err(_) => farewell(),
            },
        },
    }
}

/// What the edge does to Socket.IO requests before socketioxide sees them: a handshake (no `sid`) takes a
/// sign-in slot, bounded per address; a WebSocket of a session that has not signed in is watched (byte budget,
/// sign-in timeout); a polling POST of such a session may carry at most [`conn::PREAUTH_MAX_BYTES`].
fn socket_edge(state: &AppState, mut req: Request, ctx: &RequestContext) -> Result<Request, Box<Response>> {
    let conn = req.extensions().get::<Arc<conn::ConnShared>>().cloned();
    let upgrade = req.headers().get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    match query_param(&req, "sid") {
        None => {
            let slot = state.edge().handshake(ctx.ip).map_err(|e| {
                refused_at_edge(state, ctx.ip, "connect", &e);
                Box::new(e.into_response())
            })?;
            if upgrade && let Some(c) = &conn {
                c.watch_sign_in();
                c.hold_slot(slot.clone());
            }
            req.extensions_mut().insert(slot);
        }
        Some(sid) if upgrade => {
            if let Some(c) = &conn {
                state.edge().upgrade(&sid, c);
            }
        }
        Some(sid) if req.method() == Method::POST && !state.edge().is_signed_in(&sid) => {
            let declared = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > conn::PREAUTH_MAX_BYTES as u64) {
                let e = ServiceError::new(
                    ErrorCode::SignInTimeout,
                    format!("at most {} bytes may be sent before signing in", conn::PREAUTH_MAX_BYTES),
                );
                state.log_refusal(ctx.ip, Some(&sid), "connect", &e);
                let mut res = e.into_response();
                *res.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
                // The body is left unread, so the connection cannot carry another request.
                res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                return Err(Box::new(res));
            }
            let (parts, body) = req.into_parts();
            let limited = http_body_util::Limited::new(body, conn::PREAUTH_MAX_BYTES);
            req = Request::from_parts(parts, axum::body::Body::new(limited));
        }
        Some(_) => {}
    }
    Ok(req)
}

/// `GET /any/page?token=...`: sets the session cookie and redirects to the page without the token, so it
/// leaves the address bar and the history.
async fn sign_in_by_link(state: &AppState, token: &str, path: &str, ctx: &RequestContext) -> Response {
    match state.login(token, ctx.ip).await {
        Ok((_, value, max_age)) => {
            let cookie = crate::auth::session_set_cookie(&value, max_age, ctx.secure);
            let mut res = Response::new(axum::body::Body::empty());
            *res.status_mut() = StatusCode::SEE_OTHER;
            let h = res.headers_mut();
            h.insert(header::LOCATION, HeaderValue::from_str(path).unwrap_or(HeaderValue::from_static("/")));
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                h.insert(header::SET_COOKIE, v);
            }
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            res
        }
        Err(e) => {
            let body = format!(
                "<!doctype html><meta charset=utf-8><title>Porthole: sign-in failed</title>\
                 <body style=\"font-family:sans-serif;margin:3em\"><h1>Sign-in failed</h1><p>{}</p>\
                 <p>Open the link Porthole printed when it started, or ask for a new token.</p>",
                html_escape(&e.message)
            );
            (e.status(), [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
        }
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn with_security_headers(mut res: Response, ctx: &RequestContext) -> Response {
    let h = res.headers_mut();
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(header::CONTENT_SECURITY_POLICY, csp::header_value());
    if ctx.secure {
        h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    }
    res
}

/// Authenticates API requests (`Authorization: Bearer` or the session cookie); the [`Caller`] goes into the
/// request's extensions.
async fn require_auth(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let ip = req.extensions().get::<RequestContext>().and_then(|c| c.ip);
    let token = crate::auth::credential(req.headers());
    match state.authenticate(token.as_deref(), ip) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
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

/// Leptos server functions (`app::api`), with the service layer bound to the caller in their context.
fn server_fn_router(state: AppState) -> Router {
    let auth_state = state.clone();
    Router::new()
        .route(
            &format!("{}/{{*name}}", app::api::SERVER_FN_PREFIX),
            axum::routing::any(move |Extension(caller): Extension<Caller>, req: Request| {
                let state = state.clone();
                async move {
                    let scope: app::api::backend::SharedBackend = Arc::new(CallerScope { state, caller });
                    leptos_axum::handle_server_fns_with_context(
                        move || leptos::prelude::provide_context(scope.clone()),
                        req,
                    )
                    .await
                }
            }),
        )
        .route_layer(axum::middleware::from_fn_with_state(auth_state, require_auth))
}

/// The REST routes.
fn rest_router(state: AppState) -> Router {
    let protected = Router::new()
        .route(rest::CONTAINERS, get(containers))
        .route(rest::TERMINALS, get(terminals))
        .route(rest::TERMINAL, get(terminal).delete(close_terminal))
        .route(rest::LOGOUT, post(logout))
        .route(rest::WHOAMI, get(whoami))
        .merge(sandboxes::routes())
        .merge(recordings::routes())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_auth));
    Router::new()
        .route(rest::HEALTHZ, get(healthz))
        .route(rest::LOGIN, post(login))
        .merge(crate::cluster::peer::routes(state.clone()))
        .merge(protected)
        .fallback(not_found)
        .with_state(state)
}

async fn healthz(State(state): State<AppState>) -> Response {
    match state.health().await {
        Ok(h) => Json(h).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn login(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    body: Result<Json<Login>, JsonRejection>,
) -> Response {
    let Json(Login { token }) = match body {
        Ok(b) => b,
        Err(e) => return ServiceError::invalid(format!("login body: {}", e.body_text())).into_response(),
    };
    match state.login(&token, ctx.ip).await {
        Ok((_, value, max_age)) => {
            let cookie = crate::auth::session_set_cookie(&value, max_age, ctx.secure);
            (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn logout(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let signed_out = state.logout(&caller).await;
    let cookie = crate::auth::session_set_cookie("", 0, ctx.secure);
    match signed_out {
        Ok(()) => (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response(),
        // Signed out here; the other nodes could not be told.
        Err(e) => {
            let mut res = e.into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                res.headers_mut().insert(header::SET_COOKIE, v);
            }
            res
        }
    }
}

async fn whoami(Extension(caller): Extension<Caller>) -> Response {
    let p = caller.principal;
    Json(WhoAmI { subject: p.subject, groups: p.groups, expires_at: p.expires_at }).into_response()
}

async fn containers(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Response {
    match state.containers(&caller).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn terminals(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Response {
    Json(state.terminals_everywhere(&caller).await).into_response()
}

async fn terminal(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    match state.terminal_anywhere(&caller, &TerminalId(id)).await {
        Ok(t) => Json(t).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn close_terminal(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    match state.close_terminal_anywhere(&caller, &TerminalId(id)).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn not_found() -> Response {
    ServiceError::new(ErrorCode::NotFound, "no such route").into_response()
}
