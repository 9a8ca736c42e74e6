//! The Recordings page (`/#/recordings`): the recordings the user may see, a transcript search whose hits open
//! the player at their moment, the player (asciinema-player: play, pause, seek, speed, idle-time
//! compression), and, for a terminal still running, its recording followed live.
//!
//! Routes, in the URL's fragment: `#/recordings` (the list; `?q=WORDS` searches), `#/recordings/ID` (one
//! recording; `?t=SECONDS` opens the player there).

use app::protocol::{Recording, RecordingState};
use js_sys::{Object, Reflect, Uint8Array};
use leptos::prelude::*;
use leptos::task::spawn_local;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

use crate::term::Xterm;

#[wasm_bindgen]
extern "C" {
    /// `AsciinemaPlayer.create(src, element, options)`, from the player's standalone bundle.
    #[wasm_bindgen(js_namespace = AsciinemaPlayer, js_name = create)]
    fn create_player(src: &str, element: &web_sys::Element, options: &JsValue) -> JsValue;
}

/// Where the player's bundle is served (copied from npm's `asciinema-player` by Trunk).
const PLAYER_JS: &str = "/vendor/asciinema-player.min.js";
/// Playback speeds offered.
const SPEEDS: [f64; 5] = [0.5, 1.0, 2.0, 4.0, 8.0];
/// Idle-time limits offered, seconds (0: off).
const IDLE_LIMITS: [f64; 5] = [0.0, 0.5, 1.0, 2.0, 5.0];

/// The page's route, from the URL fragment.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    List { q: String },
    One { id: String, at: Option<f64> },
}

/// Whether the page is the Recordings page.
pub fn is_recordings_url() -> bool {
    fragment().starts_with("#/recordings")
}

fn fragment() -> String {
    web_sys::window().and_then(|w| w.location().hash().ok()).unwrap_or_default()
}

fn parse_route(hash: &str) -> Route {
    let rest = hash.strip_prefix("#/recordings").unwrap_or("");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let params = web_sys::UrlSearchParams::new_with_str(query).ok();
    let param = |k: &str| params.as_ref().and_then(|p| p.get(k));
    match path.trim_start_matches('/') {
        "" => Route::List { q: param("q").unwrap_or_default() },
        id => Route::One { id: id.to_string(), at: param("t").and_then(|t| t.parse().ok()) },
    }
}

fn js_text(e: JsValue) -> String {
    e.as_string()
        .or_else(|| Reflect::get(&e, &"message".into()).ok().and_then(|m| m.as_string()))
        .unwrap_or_else(|| "the request failed".into())
}

fn encode(s: &str) -> String {
    js_sys::encode_uri_component(s).into()
}

/// `GET url` as JSON: the value, or the server's error message.
async fn fetch_json<T: serde::de::DeserializeOwned>(url: &str) -> Result<T, String> {
    fetch_json_with(url).await.map(|(v, _)| v)
}

/// [`fetch_json`], with the response's `Porthole-Unanswered` header (in cluster mode: the nodes whose recordings
/// a list lacks).
async fn fetch_json_with<T: serde::de::DeserializeOwned>(url: &str) -> Result<(T, Option<String>), String> {
    let window = web_sys::window().ok_or("no window")?;
    let res: web_sys::Response =
        JsFuture::from(window.fetch_with_str(url)).await.map_err(js_text)?.dyn_into().map_err(js_text)?;
    let unanswered = res.headers().get("porthole-unanswered").ok().flatten();
    let body = JsFuture::from(res.json().map_err(js_text)?).await.map_err(js_text)?;
    if !res.ok() {
        let message = Reflect::get(&body, &"error".into())
            .and_then(|e| Reflect::get(&e, &"message".into()))
            .ok()
            .and_then(|m| m.as_string());
        return Err(message.unwrap_or_else(|| format!("the server answered {}", res.status())));
    }
    Ok((serde_wasm_bindgen::from_value(body).map_err(|e| e.to_string())?, unanswered))
}

/// Loads the player's bundle once.
async fn load_player() -> Result<(), String> {
    let window = web_sys::window().ok_or("no window")?;
    if Reflect::has(&window, &"AsciinemaPlayer".into()).unwrap_or(false) {
        return Ok(());
    }
    let document = window.document().ok_or("no document")?;
    let script = document.create_element("script").map_err(js_text)?;
    script.set_attribute("src", PLAYER_JS).map_err(js_text)?;
    let loaded = js_sys::Promise::new(&mut |resolve, reject| {
        let _ = script.add_event_listener_with_callback("load", &resolve);
        let _ = script.add_event_listener_with_callback("error", &reject);
    });
    document.head().ok_or("no head")?.append_child(&script).map_err(js_text)?;
    JsFuture::from(loaded).await.map(|_| ()).map_err(|_| "the player could not be loaded".to_string())
}

fn clock(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn when(ms: u64) -> String {
    let d = js_sys::Date::new(&JsValue::from_f64(ms as f64));
    String::from(d.to_locale_string("default", &JsValue::UNDEFINED))
}

#[component]
pub fn RecordingsPage() -> impl IntoView {
    let route = RwSignal::new(parse_route(&fragment()));
    let changed = window_event_listener(leptos::ev::hashchange, move |_| {
        if is_recordings_url() {
            route.set(parse_route(&fragment()));
        } else if let Some(w) = web_sys::window() {
            // Back to the terminals: that is the other page.
            let _ = w.location().reload();
        }
    });
    on_cleanup(move || changed.remove());
    view! {
        <div class="app recordings-page">
            <header class="topbar">
                <a class="brand" href="/"><span class="brand-dot"></span>"Porthole"</a>
                <a class="nav" href="#/recordings" data-testid="recordings-home">"Recordings"</a>
                <span class="spacer"></span>
                <a class="nav" href="/">"Terminals"</a>
            </header>
            <main class="recordings">
                {move || match route.get() {
                    Route::List { q } => view! { <List q=q /> }.into_any(),
                    Route::One { id, at } => view! { <One id=id at=at /> }.into_any(),
                }}
            </main>
        </div>
    }
}

#[component]
fn List(q: String) -> impl IntoView {
    let query = q.clone();
    let list = LocalResource::new(move || {
        let q = query.clone();
        async move {
            let url = if q.trim().is_empty() {
                app::protocol::rest::RECORDINGS.to_string()
            } else {
                format!("{}?q={}", app::protocol::rest::RECORDINGS, encode(&q))
            };
            fetch_json_with::<Vec<Recording>>(&url).await
        }
    });
    let input = NodeRef::<leptos::html::Input>::new();
    let search = move |e: leptos::ev::SubmitEvent| {
        e.prevent_default();
        let words = input.get().map(|i| i.value()).unwrap_or_default();
        if let Some(w) = web_sys::window() {
            let hash = if words.trim().is_empty() {
                "#/recordings".to_string()
            } else {
                format!("#/recordings?q={}", encode(&words))
            };
            let _ = w.location().set_hash(&hash);
        }
    };
    let searching = !q.trim().is_empty();
    view! {
        <form class="search" on:submit=search role="search">
            <input node_ref=input type="search" name="q" value=q.clone() placeholder="Find what was typed or shown, e.g. rm -rf"
                aria-label="Search the transcripts" data-testid="recording-search" />
            <button type="submit" data-testid="recording-search-go">"Search"</button>
        </form>
        <Suspense fallback=|| view! { <p class="quiet">"Loading…"</p> }>
            {move || list.get().map(|r| match r {
                Err(e) => view! { <p class="failure" role="alert" data-testid="recordings-error">{e}</p> }.into_any(),
                Ok((items, unanswered)) => {
                    let missing = unanswered.map(|nodes| {
                        let text = if nodes.trim() == "*" {
                            "The cluster directory does not answer: only this node's recordings are listed.".to_string()
                        } else {
                            format!("Node {nodes} does not answer: its recordings are missing from this list.")
                        };
                        view! { <p class="failure" role="status" data-testid="recordings-partial">{text}</p> }
                    });
                    let body = if items.is_empty() {
                        view! {
                            <p class="empty" data-testid="recordings-empty">
                                {if searching { "No recording matches." } else { "No recordings yet. Recording is turned on with --record or the policy's record field." }}
                            </p>
                        }.into_any()
                    } else {
                        view! {
                            <ul class="recording-list" data-testid="recordings">
                                {items.into_iter().map(|r| view! { <Item r=r /> }).collect_view()}
                            </ul>
                        }.into_any()
                    };
                    view! { {missing} {body} }.into_any()
                }
            })}
        </Suspense>
    }
}

#[component]
fn Item(r: Recording) -> impl IntoView {
    let href = format!("#/recordings/{}", r.id);
    let state = r.state.as_str();
    let hits = r.hits.clone().unwrap_or_default();
    let id = r.id.clone();
    view! {
        <li class="recording" data-testid="recording" data-id=r.id.clone() data-state=state>
            <a class="title" href=href>
                <span class="who">{format!("{}@{}", r.user, r.container)}</span>
                <code class="cmd">{r.command.clone()}</code>
            </a>
            <span class="meta">
                {when(r.started_at)}" · "{clock(r.duration_ms)}" · "{size(r.bytes)}
                {r.exit_code.map(|c| format!(" · exit {c}"))}
                {r.node.clone().map(|n| view! { " · on " <span class="node" data-testid="recording-node">{n}</span> })}
                <span class="badge" data-state=state>{state}</span>
            </span>
            {(!hits.is_empty()).then(|| view! {
                <ul class="hits">
                    {hits.into_iter().map(|h| {
                        // Just after the event that completed the line, so the frame shows it.
                        let href = format!("#/recordings/{}?t={:.3}", id, (h.time_ms + 1) as f64 / 1000.0);
                        view! {
                            <li><a href=href data-testid="hit"><span class="at">{clock(h.time_ms)}</span><code>{h.line}</code></a></li>
                        }
                    }).collect_view()}
                </ul>
            })}
        </li>
    }
}

#[component]
fn One(id: String, at: Option<f64>) -> impl IntoView {
    let url = app::protocol::recording_path(&id);
    let meta = LocalResource::new(move || {
        let url = url.clone();
        async move { fetch_json::<Recording>(&url).await }
    });
    view! {
        <a class="back" href="#/recordings">"← All recordings"</a>
        <Suspense fallback=|| view! { <p class="quiet">"Loading…"</p> }>
            {move || meta.get().map(|r| match r {
                Err(e) => view! { <p class="failure" role="alert" data-testid="recordings-error">{e}</p> }.into_any(),
                Ok(r) => {
                    let heading = view! {
                        <h1 class="recording-title">
                            {format!("{}@{}", r.user, r.container)}" "<code>{r.command.clone()}</code>
                        </h1>
                        <p class="meta">{when(r.started_at)}" · "{clock(r.duration_ms)}" · "{size(r.bytes)}
                            {r.error.clone().map(|e| format!(" · {e}"))}
                            " · "<a href=format!("{}.cast", app::protocol::recording_path(&r.id)) download="">"download .cast"</a>
                            " · "<a href=format!("{}.txt", app::protocol::recording_path(&r.id))>"transcript"</a>
                        </p>
                    };
                    if r.state == RecordingState::Recording {
                        view! { {heading} <Live id=r.id.clone() /> }.into_any()
                    } else {
                        view! { {heading} <Player id=r.id.clone() at=at /> }.into_any()
                    }
                }
            })}
        </Suspense>
    }
}

#[component]
fn Player(id: String, at: Option<f64>) -> impl IntoView {
    let host = NodeRef::<leptos::html::Div>::new();
    let speed = RwSignal::new(1.0f64);
    let idle = RwSignal::new(0.0f64);
    let player = StoredValue::new_local(None::<JsValue>);
    let failure = RwSignal::new(None::<String>);
    let src = StoredValue::new(format!("{}.cast", app::protocol::recording_path(&id)));
    // (Re)creates the player with the current speed and idle limit, at `start` seconds.
    let build = move |start: Option<f64>| {
        let Some(el) = host.get_untracked() else { return };
        if let Some(old) = player.get_value() {
            call(&old, "dispose");
        }
        el.set_inner_html("");
        let opts = Object::new();
        let set = |k: &str, v: JsValue| {
            let _ = Reflect::set(&opts, &k.into(), &v);
        };
        set("speed", speed.get_untracked().into());
        set("preload", true.into());
        set("fit", "width".into());
        set("terminalFontSize", "14px".into());
        if idle.get_untracked() > 0.0 {
            set("idleTimeLimit", idle.get_untracked().into());
        }
        if let Some(t) = start {
            set("startAt", t.into());
            set("poster", format!("npt:{t}").into());
        }
        player.set_value(Some(create_player(&src.get_value(), &el, &opts)));
    };
    Effect::new(move |_| {
        if host.get().is_some() {
            spawn_local(async move {
                match load_player().await {
                    Ok(()) => build(at),
                    Err(e) => failure.set(Some(e)),
                }
            });
        }
    });
    on_cleanup(move || {
        if let Some(p) = player.get_value() {
            call(&p, "dispose");
        }
    });
    let rebuild = move || {
        // Keep the place, where the player can tell it.
        let current = player.get_value().and_then(|p| {
            Reflect::get(&p, &"getCurrentTime".into())
                .ok()
                .and_then(|f| f.dyn_into::<js_sys::Function>().ok())
                .and_then(|f| f.call0(&p).ok())
        });
        spawn_local(async move {
            let t = match current {
                Some(v) => JsFuture::from(js_sys::Promise::resolve(&v)).await.ok().and_then(|v| v.as_f64()),
                None => None,
            };
            build(t.filter(|t| *t > 0.0));
        });
    };
    view! {
        <div class="player-controls">
            <label>"Speed "
                <select data-testid="speed" on:change=move |e| {
                    speed.set(event_target_value(&e).parse().unwrap_or(1.0));
                    rebuild();
                }>
                    {SPEEDS.iter().map(|s| view! { <option value=s.to_string() selected=*s == 1.0>{format!("{s}×")}</option> }).collect_view()}
                </select>
            </label>
            <label>"Idle time limit "
                <select data-testid="idle" on:change=move |e| {
                    idle.set(event_target_value(&e).parse().unwrap_or(0.0));
                    rebuild();
                }>
                    {IDLE_LIMITS.iter().map(|s| {
                        let text = if *s == 0.0 { "off".to_string() } else { format!("{s} s") };
                        view! { <option value=s.to_string() selected=*s == 0.0>{text}</option> }
                    }).collect_view()}
                </select>
            </label>
        </div>
        {move || failure.get().map(|f| view! { <p class="failure" role="alert">{f}</p> })}
        <div class="player" node_ref=host data-testid="player"></div>
    }
}

fn call(obj: &JsValue, method: &str) {
    if let Ok(f) = Reflect::get(obj, &method.into()).and_then(|f| f.dyn_into::<js_sys::Function>()) {
        let _ = f.call0(obj);
    }
}

/// A recording still being written, followed as it grows (`.cast?follow=true`) in a read-only terminal.
#[component]
fn Live(id: String) -> impl IntoView {
    let host = NodeRef::<leptos::html::Div>::new();
    let ended = RwSignal::new(false);
    let failure = RwSignal::new(None::<String>);
    let url = format!("{}.cast?follow=true", app::protocol::recording_path(&id));
    Effect::new(move |_| {
        let Some(el) = host.get() else { return };
        let url = url.clone();
        spawn_local(async move {
            let dark = crate::ui::prefers_dark();
            let term = Xterm::open(el.unchecked_into(), dark);
            match follow(&url, &term).await {
                Ok(()) => ended.set(true),
                Err(e) => failure.set(Some(e)),
            }
        });
    });
    let again = id.clone();
    view! {
        <p class="live" data-testid="live">
            {move || if ended.get() { "The terminal ended." } else { "Live: following the terminal as it is recorded." }}
            {move || ended.get().then(|| view! {
                " "<a href=format!("#/recordings/{again}?t=0") data-testid="play-now" on:click=|_| {
                    if let Some(w) = web_sys::window() { let _ = w.location().reload(); }
                }>"Play the recording"</a>
            })}
        </p>
        {move || failure.get().map(|f| view! { <p class="failure" role="alert">{f}</p> })}
        <div class="live-term" node_ref=host data-testid="live-term"></div>
    }
}

/// Streams the file into `term` until the recording is closed.
async fn follow(url: &str, term: &Xterm) -> Result<(), String> {
    let window = web_sys::window().ok_or("no window")?;
    let res: web_sys::Response =
        JsFuture::from(window.fetch_with_str(url)).await.map_err(js_text)?.dyn_into().map_err(js_text)?;
    if !res.ok() {
        return Err(format!("the server answered {}", res.status()));
    }
    let body = res.body().ok_or("the answer has no body")?;
    let reader: web_sys::ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let decoder = web_sys::TextDecoder::new().map_err(js_text)?;
    let opts = web_sys::TextDecodeOptions::new();
    opts.set_stream(true);
    let mut pending = String::new();
    let mut header = true;
    loop {
        let chunk = JsFuture::from(reader.read()).await.map_err(js_text)?;
        if Reflect::get(&chunk, &"done".into()).ok().and_then(|d| d.as_bool()).unwrap_or(true) {
            return Ok(());
        }
        let bytes: Uint8Array = Reflect::get(&chunk, &"value".into()).map_err(js_text)?.unchecked_into();
        let buf = bytes.to_vec();
        pending.push_str(&decoder.decode_with_u8_array_and_options(&buf, &opts).map_err(js_text)?);
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            let Ok(v) = js_sys::JSON::parse(line.trim_end()) else { continue };
            if std::mem::take(&mut header) {
                let n = |k: &str| Reflect::get(&v, &k.into()).ok().and_then(|x| x.as_f64()).unwrap_or(0.0) as u32;
                if n("width") > 0 && n("height") > 0 {
                    term.terminal().resize(n("width"), n("height"));
                }
                continue;
            }
            let at = |i: u32| Reflect::get_u32(&v, i).ok();
            let (Some(code), Some(data)) = (at(1).and_then(|c| c.as_string()), at(2).and_then(|d| d.as_string()))
            else {
                continue;
            };
            match code.as_str() {
                "o" => term.write_str(&data),
                "r" => {
                    if let Some((c, r)) = data.split_once('x')
                        && let (Ok(c), Ok(r)) = (c.parse(), r.parse())
                    {
                        term.terminal().resize(c, r);
                    }
                }
                _ => {}
            }
        }
    }
}
