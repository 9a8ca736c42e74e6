//! REST for recordings: the list and search, one recording's metadata, its `.cast` file (with ranges, or
//! followed while it is written), its transcript, and removal.

use app::protocol::{ASCIICAST_MEDIA_TYPE, RecordingQuery, rest};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::error::ServiceError;
use crate::recording::Progress;
use crate::state::{AppState, Caller};

/// Bytes read from the file per chunk of a followed download.
const FOLLOW_CHUNK: usize = 64 * 1024;

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
        Ok(list) => Json(list).into_response(),
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
    match state.recording(&caller, &file) {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn cast(state: AppState, caller: Caller, id: &str, follow: bool, req: Request) -> Response {
    let (_, path, live) = match state.recording_file(&caller, id) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
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
    match state.remove_recording(&caller, &file) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}
