//! REST for recordings: the list and search, one recording's metadata, its `.cast` file (with ranges, or
//! followed while it is written), its transcript, and removal. In cluster mode, also the peer routes through
//! which the user's node reads and removes this node's recordings (signed, unfiltered: the user's node decided).

use app::protocol::{ASCIICAST_MEDIA_TYPE, RecordingQuery, rest};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::cluster::recordings as remote;
use crate::error::ServiceError;
use crate::recording::Progress;
use crate::recording::index::Filter;
use crate::state::{AppState, Caller, CastSource};

/// Bytes read from the file per chunk of a followed download.
const FOLLOW_CHUNK: usize = 64 * 1024;
/// In cluster mode, on a list that lacks some nodes' recordings: those nodes' ids (`*`: the directory did not
/// answer, so only the asked node's recordings are in it).
pub const UNANSWERED: &str = "porthole-unanswered";

pub fn routes() -> Router<AppState> {
    Router::new().route(rest::RECORDINGS, get(list)).route(rest::RECORDING, get(one).delete(remove))
}

async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<RecordingQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return ServiceError::invalid(format!("recordings query: {}", e.body_text())).into_response(),
    };
    match state.recordings(&caller, &q).await {
        Ok(page) => {
            let mut res = Json(page.recordings).into_response();
            if !page.unanswered.is_empty()
                && let Ok(v) = HeaderValue::from_str(&page.unanswered.join(", "))
            {
                res.headers_mut().insert(UNANSWERED, v);
            }
            res
        }
        Err(e) => e.into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CastQuery {
    #[serde(default)]
    follow: bool,
}

async fn one(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(file): Path<String>,
    req: Request,
) -> Response {
    if let Some(id) = file.strip_suffix(".cast") {
        let follow = match Query::<CastQuery>::try_from_uri(req.uri()) {
            Ok(Query(q)) => q.follow,
            Err(e) => return ServiceError::invalid(format!("download query: {}", e.body_text())).into_response(),
        };
        return cast(state, caller, id, follow, req).await;
    }
    if let Some(id) = file.strip_suffix(".txt") {
        return match state.recording_transcript(&caller, id).await {
            Ok(text) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response(),
            Err(e) => e.into_response(),
        };
    }
    match state.recording(&caller, &file).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn cast(state: AppState, caller: Caller, id: &str, follow: bool, req: Request) -> Response {
    let (r, source) = match state.recording_file(&caller, id).await {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    match (source, state.cluster()) {
        (CastSource::Here(path, live), _) => serve_cast(&r.id, path, live, follow, req).await,
        (CastSource::Peer(node), Some(cluster)) => {
            let method = req.method().clone();
            match remote::cast_on(cluster, &node, &r.id, follow, method, req.headers()).await {
                Ok(res) => relay_download(res),
                Err(e) => e.into_response(),
            }
        }
        (CastSource::Peer(_), None) => {
            ServiceError::new(app::protocol::ErrorCode::UnknownRecording, "gone").into_response()
        }
    }
}

/// A download another node serves, passed on as it comes.
fn relay_download(res: reqwest::Response) -> Response {
    let mut out = Response::builder().status(res.status().as_u16());
    for name in remote::FORWARDED_RESPONSE_HEADERS {
        if let Some(v) = res.headers().get(name) {
            out = out.header(name, v.as_bytes());
        }
    }
    out.body(axum::body::Body::from_stream(res.bytes_stream())).unwrap_or_else(|e| {
        ServiceError::new(app::protocol::ErrorCode::Internal, format!("cannot pass the download on: {e}"))
            .into_response()
    })
}

/// Serves this node's `.cast` file at `path`: ranges and conditional requests, or followed while `live`.
async fn serve_cast(
    id: &str,
    path: std::path::PathBuf,
    live: Option<tokio::sync::watch::Receiver<Progress>>,
    follow: bool,
    req: Request,
) -> Response {
    let media = HeaderValue::from_static(ASCIICAST_MEDIA_TYPE);
    if !follow {
        // Ranges, conditional requests and HEAD, from tower-http.
        let served = tower::ServiceExt::oneshot(tower_http::services::ServeFile::new(&path), req).await;
        let mut res = match served {
            Ok(res) => res.map(axum::body::Body::new),
            Err(never) => match never {},
        };
        if res.status().is_success() {
            res.headers_mut().insert(header::CONTENT_TYPE, media);
        } else if res.status() == StatusCode::NOT_FOUND {
            return ServiceError::new(
                app::protocol::ErrorCode::UnknownRecording,
                format!("recording {id}'s file is gone"),
            )
            .into_response();
        }
        return res;
    }
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            return ServiceError::new(app::protocol::ErrorCode::Internal, format!("cannot open the recording: {e}"))
                .into_response();
        }
    };
    let stream = futures_util::stream::unfold(Follow { file, pos: 0, live }, |mut f| async move {
        f.next().await.map(|chunk| (chunk, f))
    });
    (
        [(header::CONTENT_TYPE, media), (header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// A followed download: what the file has, then what the recorder writes, until it is closed.
struct Follow {
    file: tokio::fs::File,
    pos: u64,
    /// `None`: the recording is closed (or was, when the download started).
    live: Option<tokio::sync::watch::Receiver<Progress>>,
}

impl Follow {
    /// The next chunk (`None`: the end).
    async fn next(&mut self) -> Option<std::io::Result<Vec<u8>>> {
        loop {
            let (limit, done) = match &self.live {
                Some(rx) => {
                    let p = *rx.borrow();
                    (if p.done { u64::MAX } else { p.file_len }, p.done)
                }
                None => (u64::MAX, true),
            };
            if self.pos < limit {
                let want = (limit - self.pos).min(FOLLOW_CHUNK as u64) as usize;
                let mut buf = vec![0u8; want];
                if let Err(e) = self.file.seek(std::io::SeekFrom::Start(self.pos)).await {
                    return Some(Err(e));
                }
                match self.file.read(&mut buf).await {
                    Ok(0) if done => return None,
                    Ok(0) => {}
                    Ok(n) => {
                        buf.truncate(n);
                        self.pos += n as u64;
                        return Some(Ok(buf));
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
            let rx = self.live.as_mut()?;
            if rx.changed().await.is_err() {
                self.live = None;
            }
        }
    }
}

async fn remove(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(file): Path<String>,
) -> Response {
    match state.remove_recording(&caller, &file).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

/// The peer routes for this node's recordings (behind the signature check of [`crate::cluster::peer::routes`]).
pub fn peer_routes() -> Router<AppState> {
    Router::new()
        .route(&format!("{}recordings", crate::cluster::peer::PREFIX), get(peer_list))
        .route(&remote::path("{file}"), get(peer_one).delete(peer_remove))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerListQuery {
    /// A [`Filter`] as JSON.
    filter: String,
}

async fn peer_list(State(state): State<AppState>, query: Result<Query<PeerListQuery>, QueryRejection>) -> Response {
    let filter = match query
        .map_err(|e| e.body_text())
        .and_then(|Query(q)| serde_json::from_str::<Filter>(&q.filter).map_err(|e| e.to_string()))
    {
        Ok(mut f) => {
            f.limit = f.limit.clamp(1, app::protocol::MAX_RECORDINGS_PAGE);
            f
        }
        Err(e) => return ServiceError::invalid(format!("peer recordings filter: {e}")).into_response(),
    };
    match state.recordings_here(filter).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn peer_one(State(state): State<AppState>, Path(file): Path<String>, req: Request) -> Response {
    let unknown = |id: &str| {
        ServiceError::new(app::protocol::ErrorCode::UnknownRecording, format!("no recording {id} on this node"))
            .into_response()
    };
    let (id, suffix) = match file.rsplit_once('.') {
        Some((id, s @ ("cast" | "txt"))) => (id, s),
        _ => (file.as_str(), ""),
    };
    let r = match state.recording_here(id) {
        Ok(Some(r)) => r,
        Ok(None) => return unknown(id),
        Err(e) => return e.into_response(),
    };
    match suffix {
        "cast" => {
            let follow = match Query::<CastQuery>::try_from_uri(req.uri()) {
                Ok(Query(q)) => q.follow,
                Err(e) => return ServiceError::invalid(format!("download query: {}", e.body_text())).into_response(),
            };
            let recordings = state.recordings_store();
            serve_cast(&r.id, recordings.file(&r.id), recordings.follow(&r.id), follow, req).await
        }
        "txt" => match std::sync::Arc::clone(state.recordings_store()).transcript(&r).await {
            Ok(text) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response(),
            Err(e) => e.into_response(),
        },
        _ => Json(r).into_response(),
    }
}

async fn peer_remove(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.recordings_store().remove_one(&id) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}
