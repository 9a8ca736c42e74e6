//! The UI's views: top bar with the connection state, container picker (a drawer on phones), tab bar,
//! terminal panes and the phone key bar. What the tabs do on the wire is in [`crate::terminals`].

use app::protocol::{self, ContainerSummary, Resize, event};
use js_sys::Function;
use leptos::prelude::*;
use leptos::task::spawn_local;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use crate::socket::{Client, ConnState};
use crate::tabs::{TabItem, TabKey, TabState, Ui};
use crate::term::Xterm;

/// Why the container list could not be loaded, as the user should read it.
#[derive(Debug, Clone)]
struct ListError(String);

impl std::fmt::Display for ListError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ListError {}

/// The phone key bar: the keys phone keyboards lack, with what each sends (Ctrl is a sticky modifier).
const KEY_BAR: [(&str, &str); 7] = [
    ("Esc", "\x1b"),
    ("Tab", "\t"),
    ("Up", "\x1b[A"),
    ("Down", "\x1b[B"),
    ("Left", "\x1b[D"),
    ("Right", "\x1b[C"),
    ("|", "|"),
];

impl Ui {
    /// Gives the keyboard back to the visible terminal (after clicks on the tab bar, closes, ...).
    fn focus_active(&self) {
        let ui = *self;
        request_animation_frame(move || {
            if let Some(key) = ui.active.get_untracked() {
                ui.with_xterm(key, |x| x.focus());
            }
        });
    }

    pub fn activate(&self, key: TabKey) {
        self.drawer.set(false);
        let previous = self.active.get_untracked();
        if previous == Some(key) {
            self.focus_active();
            return;
        }
        if let Some(p) = previous {
            self.with_xterm(p, |x| x.hide());
        }
        self.active.set(Some(key));
        // The pane becomes visible when Leptos applies the change, after this handler: focus then.
        let ui = *self;
        request_animation_frame(move || {
            if ui.active.get_untracked() == Some(key) {
                ui.with_xterm(key, |x| {
                    x.show();
                    x.focus();
                });
            }
        });
    }

    fn cycle(&self, step: i32) {
        let keys = self.keys();
        if keys.is_empty() {
            return;
        }
        let at = self.active.get_untracked().and_then(|a| keys.iter().position(|k| *k == a)).unwrap_or(0) as i32;
        let next = (at + step).rem_euclid(keys.len() as i32) as usize;
        self.activate(keys[next]);
    }

    pub fn remove_tab(&self, key: TabKey) {
        let pos = self.keys().iter().position(|k| *k == key);
        if let Some(mut tab) = self.take_tab(key)
            && let Some(x) = tab.xterm.as_mut()
        {
            x.dispose();
        }
        if self.active.get_untracked() != Some(key) {
            self.focus_active();
        } else {
            self.active.set(None);
            let remaining = self.keys();
            if let Some(p) = pos
                && !remaining.is_empty()
            {
                self.activate(remaining[p.min(remaining.len() - 1)]);
            }
        }
    }

    /// Creates the xterm for a tab in `el`, wires its input and size to the server, then starts the terminal.
    fn mount_xterm(&self, key: TabKey, el: web_sys::HtmlElement) {
        let mut x = Xterm::open(el, self.dark.get_untracked());
        let ui = *self;
        let on_data = Closure::<dyn FnMut(String)>::new(move |data: String| ui.type_keys(key, data.into_bytes()));
        x.listen("onData", on_data.as_ref().unchecked_ref());
        // Binary data (some mouse reports): one byte per character.
        let on_binary = Closure::<dyn FnMut(String)>::new(move |data: String| {
            ui.send_input(key, data.chars().map(|c| c as u32 as u8).collect())
        });
        x.listen("onBinary", on_binary.as_ref().unchecked_ref());
        let on_resize = Closure::<dyn FnMut(JsValue)>::new(move |size: JsValue| {
            let get = |k: &str| js_sys::Reflect::get(&size, &k.into()).ok().and_then(|v| v.as_f64()).unwrap_or(0.0);
            let (cols, rows) = (get("cols") as u16, get("rows") as u16);
            if let Some(view) = ui.view(key)
                && let Some(id) = view.terminal.get_untracked()
                && view.state.get_untracked() == TabState::Running
                && protocol::dimension_ok(cols)
                && protocol::dimension_ok(rows)
            {
                ui.client().emit::<event::Resize>(&Resize { terminal_id: id, cols, rows });
            }
        });
        x.listen("onResize", on_resize.as_ref().unchecked_ref());
        // Copy on select.
        let term: xterm_js_rs::Terminal = JsValue::clone(x.terminal()).unchecked_into();
        let on_select = Closure::<dyn FnMut()>::new(move || {
            if term.has_selection()
                && let Some(w) = web_sys::window()
            {
                let _ = w.navigator().clipboard().write_text(&term.get_selection());
            }
        });
        x.listen("onSelectionChange", on_select.as_ref().unchecked_ref());
        // Tab shortcuts pass through xterm to the window handler instead of reaching the shell.
        let keys = Closure::<dyn FnMut(web_sys::KeyboardEvent) -> bool>::new(|e: web_sys::KeyboardEvent| {
            shortcut(&e).is_none()
        });
        x.terminal().attach_custom_key_event_handler(keys.as_ref().unchecked_ref::<Function>());
        // Closures live as long as the terminal; the terminal's dispose drops xterm's references.
        on_data.forget();
        on_binary.forget();
        on_resize.forget();
        on_select.forget();
        keys.forget();
        if self.active.get_untracked() == Some(key) {
            x.show();
        }
        let restore = self.with_tab(key, |t| {
            t.xterm = Some(x);
            t.restore.clone()
        });
        match restore.flatten() {
            Some(id) => self.attach(key, id, None),
            None => self.start_terminal(key),
        }
    }

    fn fit_active(&self) {
        if let Some(key) = self.active.get_untracked() {
            self.with_xterm(key, |x| x.fit());
        }
    }

    fn set_dark(&self, dark: bool) {
        self.dark.set(dark);
        for key in self.keys() {
            self.with_xterm(key, |x| x.set_dark(dark));
        }
    }

    /// Plain-text screen of the tab at `index` (test and debugging hook: `window.porthole.screen(i)`).
    fn screen_text(&self, index: usize) -> Option<String> {
        let key = self.keys().get(index).copied()?;
        self.with_xterm(key, |x| x.text())
    }

    /// Opens or closes the container drawer; closing gives the keyboard back to the terminal.
    fn toggle_drawer(&self, open: bool) {
        self.drawer.set(open);
        if !open {
            self.focus_active();
        }
    }

    /// A key bar key: sent to the active tab, which keeps the keyboard.
    fn key_bar(&self, data: &str) {
        if let Some(key) = self.active.get_untracked() {
            self.type_keys(key, data.as_bytes().to_vec());
            self.focus_active();
        }
    }
}

/// Keyboard shortcuts. Alt is used because browsers keep Ctrl+T/W/Tab for themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shortcut {
    NewTab,
    CloseTab,
    Next,
    Previous,
    Goto(usize),
}

fn shortcut(e: &web_sys::KeyboardEvent) -> Option<Shortcut> {
    if e.type_() != "keydown" {
        return None;
    }
    // Physical keys (`code`), so Option/AltGr layouts that turn Alt+T into another character still work, and
    // AltGr combinations that type characters (e.g. `[` on German layouts) are left alone.
    let code = e.code();
    if e.alt_key() && !e.ctrl_key() && !e.meta_key() && !e.get_modifier_state("AltGraph") {
        return match code.as_str() {
            "KeyT" => Some(Shortcut::NewTab),
            "KeyW" => Some(Shortcut::CloseTab),
            "BracketRight" | "ArrowRight" => Some(Shortcut::Next),
            "BracketLeft" | "ArrowLeft" => Some(Shortcut::Previous),
            c => c
                .strip_prefix("Digit")
                .and_then(|d| d.parse::<usize>().ok())
                .filter(|n| (1..=9).contains(n))
                .map(|n| Shortcut::Goto(n - 1)),
        };
    }
    if e.ctrl_key() && !e.alt_key() {
        return match e.key().as_str() {
            "PageDown" => Some(Shortcut::Next),
            "PageUp" => Some(Shortcut::Previous),
            _ => None,
        };
    }
    None
}

#[component]
pub fn App() -> impl IntoView {
    let ui = Ui::new();
    let containers = LocalResource::new(move || {
        // Tracked: bumping it fetches the list again.
        ui.list_version.track();
        async {
            app::api::list_containers().await.map_err(|e| {
                ListError(match e {
                    leptos::prelude::ServerFnError::ServerError(m) => m,
                    other => other.to_string(),
                })
            })
        }
    });
    let refresh = move || containers.refetch();

    let client = ui.client();
    client.on_output(move |id, offset, data| ui.on_output(id, offset, data));
    client.on::<event::TerminalViewers>(move |v| ui.on_viewers(v));
    client.on_disconnect(move || ui.suspend_all());
    // First connect: bring back this client's running terminals (a reload, a second window). Reconnects:
    // resume every tab from the last byte it got.
    let connects = StoredValue::new(0u32);
    client.on_connect(move || {
        let n = connects.get_value();
        connects.set_value(n + 1);
        if n == 0 {
            spawn_local(async move {
                if let Ok(list) = app::api::list_terminals().await {
                    let mine = protocol::Owner::Client(crate::socket::client_id()).to_string();
                    for t in list.into_iter().filter(|t| t.owner == mine && t.state != protocol::TerminalState::Exited)
                    {
                        ui.restore_tab(t);
                    }
                }
            });
        } else {
            ui.resume_all();
        }
    });
    client.on::<event::Exit>(move |exit| ui.on_exit(exit));
    // Coalesce bursts of container events into one refresh.
    let pending = StoredValue::new(false);
    client.on::<event::ContainersChanged>(move |_| {
        if !pending.get_value() {
            pending.set_value(true);
            set_timeout(
                move || {
                    pending.set_value(false);
                    refresh();
                },
                std::time::Duration::from_millis(150),
            );
        }
    });
    client.on::<event::Hello>(move |hello| ui.user.set(Some(hello.user)));
    client.on_auth_error(move |why| {
        ui.auth_problem.set(Some(why));
        ui.conn.set(ConnState::SignedOut);
    });
    client.on_state(move |state| {
        let before = ui.conn.get_untracked();
        if before == ConnState::SignedOut && state != ConnState::Connected {
            // Only a successful sign-in (and reload) leaves this state.
            return;
        }
        ui.conn.set(state);

        if state == ConnState::Connected && before != ConnState::Connected {
            refresh();
        }
    });

    let keys = window_event_listener(leptos::ev::keydown, move |e| {
        let Some(s) = shortcut(&e) else { return };
        e.prevent_default();
        match s {
            Shortcut::NewTab => {
                let current = ui
                    .active
                    .get_untracked()
                    .and_then(|k| ui.with_tab(k, |t| (t.container_id.clone(), t.container_name.clone())));
                if let Some((id, name)) = current {
                    ui.open_tab(id, name);
                }
            }
            Shortcut::CloseTab => {
                if let Some(k) = ui.active.get_untracked() {
                    ui.close_tab(k);
                }
            }
            Shortcut::Next => ui.cycle(1),
            Shortcut::Previous => ui.cycle(-1),
            Shortcut::Goto(i) => {
                if let Some(k) = ui.keys().get(i).copied() {
                    ui.activate(k);
                }
            }
        }
    });
    on_cleanup(move || keys.remove());
    let resize = window_event_listener(leptos::ev::resize, move |_| ui.fit_active());
    on_cleanup(move || resize.remove());
    watch_color_scheme(ui);
    install_test_hook(ui);
    // The Recordings page is another page: going there from here loads it.
    let to_recordings = window_event_listener(leptos::ev::hashchange, move |_| {
        if crate::recordings::is_recordings_url()
            && let Some(w) = web_sys::window()
        {
            let _ = w.location().reload();
        }
    });
    on_cleanup(move || to_recordings.remove());

    view! {
        <div class="app" class:drawer-open=move || ui.drawer.get()>
            <header class="topbar">
                <button class="drawer-toggle" aria-label="Containers" aria-expanded=move || ui.drawer.get().to_string()
                    data-testid="drawer-toggle" on:click=move |_| ui.toggle_drawer(!ui.drawer.get_untracked())>
                    <span class="burger"></span>
                </button>
                <span class="brand"><span class="brand-dot"></span>"Porthole"</span>
                <a class="nav" href="/#/recordings" target="_blank" rel="noopener" data-testid="recordings-link">"Recordings"</a>
                <span class="spacer"></span>
                <span class="hint">
                    <kbd>"Alt+T"</kbd>" new tab · "<kbd>"Alt+W"</kbd>" close · "<kbd>"Alt+["</kbd>" "<kbd>"Alt+]"</kbd>" switch"
                </span>
                {move || {
                    ui.user.get().map(|user| {
                        let sign_out = move |_| {
                            spawn_local(async move {
                                Client::sign_out().await;
                                if let Some(w) = web_sys::window() {
                                    let _ = w.location().reload();
                                }
                            })
                        };
                        view! {
                            <span class="user" data-testid="user" title="Signed in as">{user}</span>
                            <button class="signout" data-testid="sign-out" on:click=sign_out>"Sign out"</button>
                        }
                    })
                }}
                <span class="conn" data-testid="connection" data-state=move || ui.conn.get().label()>
                    {move || ui.conn.get().label()}
                </span>
            </header>
            <Show when=move || ui.conn.get() == ConnState::SignedOut>
                <SignIn ui=ui />
            </Show>
            <Picker ui=ui containers=containers />
            <div class="drawer-scrim" on:click=move |_| ui.toggle_drawer(false)></div>
            <main class="main">
                <TabBar ui=ui />
                <div class="panes">
                    <Show when=move || ui.order.with(|t| t.is_empty())>
                        <div class="welcome">
                            <h1>"Pick a container"</h1>
                            <span>"Its shell opens here, in a new tab."</span>
                        </div>
                    </Show>
                    <For each=move || ui.order.get() key=|t| t.view.key let:tab>
                        <Pane ui=ui tab=tab />
                    </For>
                </div>
                <KeyBar ui=ui />
            </main>
        </div>
    }
}

/// Shown when the server refuses this browser: why, and a field for a token (the local access token or a
/// JWT), exchanged for a session cookie.
#[component]
fn SignIn(ui: Ui) -> impl IntoView {
    let input = NodeRef::<leptos::html::Input>::new();
    let failure = RwSignal::new(None::<String>);
    let submit = move |e: leptos::ev::SubmitEvent| {
        e.prevent_default();
        let Some(token) = input.get_untracked().map(|i| i.value()) else { return };
        let token = token.trim().to_string();
        if token.is_empty() {
            return;
        }
        spawn_local(async move {
            match Client::sign_in(&token).await {
                Ok(()) => {
                    if let Some(w) = web_sys::window() {
                        let _ = w.location().reload();
                    }
                }
                Err(why) => failure.set(Some(why)),
            }
        });
    };
    view! {
        <div class="signin-backdrop">
            <form class="signin" data-testid="signin" on:submit=submit>
                <h1>"Sign in to Porthole"</h1>
                <p class="why">{move || ui.auth_problem.get()}</p>
                <p>"Open the link Porthole printed when it started, or paste your access token or JWT:"</p>
                <input
                    node_ref=input
                    type="password"
                    autocomplete="off"
                    spellcheck="false"
                    aria-label="Access token"
                    data-testid="token-input"
                />
                <button type="submit">"Sign in"</button>
                {move || failure.get().map(|f| view! { <p class="failure" role="alert">{f}</p> })}
            </form>
        </div>
    }
}

#[component]
fn Picker(ui: Ui, containers: LocalResource<Result<Vec<ContainerSummary>, ListError>>) -> impl IntoView {
    let filter = RwSignal::new(String::new());
    let matching = move |list: Vec<ContainerSummary>| {
        let needle = filter.get().to_lowercase();
        list.into_iter()
            .filter(|c| {
                needle.is_empty()
                    || c.name.to_lowercase().contains(&needle)
                    || c.image.to_lowercase().contains(&needle)
                    || c.host.to_lowercase().contains(&needle)
            })
            .collect::<Vec<_>>()
    };
    let list_view = move |list: Vec<ContainerSummary>| {
        if list.is_empty() {
            return view! { <div class="empty">"No containers match."</div> }.into_any();
        }
        // With more than one Docker host, each container says which it is on.
        let several = ContainerSummary::several_hosts(&list);
        view! {
            <ul class="containers" data-testid="containers">
                {list.into_iter().map(|c| container_item(ui, c, several)).collect_view()}
            </ul>
        }
        .into_any()
    };
    view! {
        <aside class="sidebar" data-testid="drawer">
            <h2>"Containers"</h2>
            <input class="filter" type="search" placeholder="Filter by name or image" aria-label="Filter containers"
                prop:value=move || filter.get()
                on:input=move |ev| filter.set(event_target_value(&ev)) />
            <NewSandbox ui=ui />
            {move || ui.notice.get().map(|n| view! { <div class="notice" role="alert" data-testid="notice">{n}</div> })}
            <Transition fallback=|| ()>
                <ErrorBoundary fallback=|errors| view! {
                    {move || errors.get().into_iter().map(|(_, e)| view! {
                        <div class="notice" role="alert">{e.to_string()}</div>
                    }).collect_view()}
                }>
                    {move || containers.get().map(|r| r.map(|list| list_view(matching(list))))}
                </ErrorBoundary>
            </Transition>
        </aside>
    }
}

/// "in 7h 59m", "in 42s": how long until `at_ms`.
fn time_left(at_ms: u64) -> String {
    let now = js_sys::Date::now() as u64;
    let secs = at_ms.saturating_sub(now) / 1000;
    match secs {
        0 => "expiring".into(),
        s if s < 60 => format!("{s}s left"),
        s if s < 3600 => format!("{}m left", s / 60),
        s => format!("{}h {}m left", s / 3600, (s % 3600) / 60),
    }
}

/// One container in the picker: open it; its host's badge (`show_host`); a sandbox's badge, profile and time
/// left; the actions the policy allows.
fn container_item(ui: Ui, c: ContainerSummary, show_host: bool) -> impl IntoView {
    let (id, name) = (c.id.clone(), c.name.clone());
    let running = c.state == "running";
    let meta = match &c.sandbox {
        Some(s) => format!("{} · {} · {}", s.profile, time_left(s.expires_at), c.status),
        None => format!("{} · {}", c.image, c.status),
    };
    let action = move |what: &'static str| {
        let container_id = c.id.clone();
        move |_| {
            let req = protocol::ContainerAction { container_id: container_id.clone() };
            match what {
                "start" => ui.container_request::<event::StartContainer>(req),
                "stop" => ui.container_request::<event::StopContainer>(req),
                "restart" => ui.container_request::<event::RestartContainer>(req),
                _ => ui.container_request::<event::RemoveSandbox>(protocol::RemoveSandbox { id: container_id.clone() }),
            }
        }
    };
    let manage = c.rights.manage.then(|| {
        view! {
            <button class="act" data-testid="start" title="Start" disabled=running on:click=action("start")>"▶"</button>
            <button class="act" data-testid="stop" title="Stop" disabled=!running on:click=action("stop")>"■"</button>
            <button class="act" data-testid="restart" title="Restart" on:click=action("restart")>"↻"</button>
        }
    });
    let remove = c.rights.remove.then(|| {
        view! { <button class="act danger" data-testid="remove" title="Remove sandbox" on:click=action("remove")>"✕"</button> }
    });
    let title = meta.clone();
    view! {
        <li class="container-row" data-name=c.name.clone() data-host=c.host.clone()>
            <button class="container" data-state=c.state.clone() data-name=c.name.clone() title=title
                on:click=move |_| ui.open_tab(id.clone(), name.clone())>
                <span class="dot"></span>
                <span class="name">
                    <span class="label">{c.name.clone()}</span>
                    {show_host.then(|| view! { <span class="badge host" data-testid="host-badge">{c.host.clone()}</span> })}
                    {c.sandbox.is_some().then(|| view! { <span class="badge" data-testid="sandbox-badge">"sandbox"</span> })}
                </span>
                <span class="meta">{meta}</span>
            </button>
            <span class="actions">{manage}{remove}</span>
        </li>
    }
}

/// The "New sandbox" control: the profiles the user may create, and a button that opens a tab in a new one.
#[component]
fn NewSandbox(ui: Ui) -> impl IntoView {
    let profiles = LocalResource::new(|| async { app::api::list_sandbox_profiles().await.unwrap_or_default() });
    let chosen = RwSignal::new(String::new());
    let create = move |_| {
        let profile = chosen.get_untracked();
        let first = profiles.get().and_then(|p| p.first().map(|p| p.name.clone()));
        if let Some(profile) = Some(profile).filter(|p| !p.is_empty()).or(first) {
            ui.open_sandbox_tab(profile);
            ui.toggle_drawer(false);
        }
    };
    view! {
        <Transition fallback=|| ()>
            {move || profiles.get().filter(|p| !p.is_empty()).map(|list| view! {
                <div class="new-sandbox" data-testid="new-sandbox">
                    <select aria-label="Sandbox profile" data-testid="profile"
                        on:change=move |ev| chosen.set(event_target_value(&ev))>
                        {list.into_iter().map(|p| {
                            let label = match p.runtime.as_deref() {
                                Some(r) => format!("{} ({}, {r})", p.name, p.image),
                                None => format!("{} ({})", p.name, p.image),
                            };
                            view! { <option value=p.name.clone()>{label}</option> }
                        }).collect_view()}
                    </select>
                    <button class="primary" data-testid="create-sandbox" on:click=create>"New sandbox"</button>
                </div>
            })}
        </Transition>
    }
}

#[component]
fn TabBar(ui: Ui) -> impl IntoView {
    view! {
        <nav class="tabs" role="tablist">
            <For each=move || ui.order.get() key=|t| t.view.key let:tab>
                {
                    let TabItem { view: v } = tab;
                    let key = v.key;
                    view! {
                        <div class="tab" role="tab" data-testid="tab"
                            aria-selected=move || (ui.active.get() == Some(key)).to_string()
                            on:click=move |_| ui.activate(key)>
                            <span class="title">{move || v.title.get()}</span>
                            {move || (v.viewers.get() > 1).then(|| view! {
                                <span class="viewers" data-testid="viewers" title="Sockets following this terminal">
                                    {format!("👥 {}", v.viewers.get())}
                                </span>
                            })}
                            {move || match v.state.get() {
                                TabState::Ended { marker, .. } => Some(view! { <span class="marker">{format!("⏻ {marker}")}</span> }),
                                _ => None,
                            }}
                            <button class="close" title="Close tab (Alt+W)" aria-label="Close tab"
                                on:click=move |e| { e.stop_propagation(); ui.close_tab(key); }>"×"</button>
                        </div>
                    }
                }
            </For>
        </nav>
    }
}

#[component]
fn Pane(ui: Ui, tab: TabItem) -> impl IntoView {
    let key = tab.view.key;
    let el = NodeRef::<leptos::html::Div>::new();
    el.on_load(move |div| {
        let el: web_sys::HtmlElement = div.into();
        // Measure with the real font: wait for it before xterm sizes its cells.
        spawn_local(async move {
            if let Some(doc) = web_sys::window().and_then(|w| w.document()) {
                let _ = wasm_bindgen_futures::JsFuture::from(doc.fonts().load("14px \"JetBrains Mono\"")).await;
            }
            // The tab may have been closed while the font loaded.
            if ui.view(key).is_some() {
                ui.mount_xterm(key, el);
            }
        });
    });
    let state = tab.view.state;
    view! {
        <section class="pane" role="tabpanel" data-testid="pane" hidden=move || ui.active.get() != Some(key)>
            <div class="term" node_ref=el></div>
            {move || match state.get() {
                TabState::Ended { detail, .. } => Some(view! {
                    <div class="ended" data-testid="ended">
                        <span>{detail}</span>
                        <button on:click=move |_| ui.start_terminal(key)>"Reopen"</button>
                    </div>
                }),
                _ => None,
            }}
        </section>
    }
}

/// Keys phone keyboards lack (shown on narrow screens), sent to the active tab. Buttons take no focus, so the
/// phone keyboard stays up.
#[component]
fn KeyBar(ui: Ui) -> impl IntoView {
    let keep_focus = |e: leptos::ev::PointerEvent| e.prevent_default();
    view! {
        <div class="keybar" role="toolbar" aria-label="Terminal keys" data-testid="keybar">
            <button aria-label="Ctrl" aria-pressed=move || ui.ctrl.get().to_string() on:pointerdown=keep_focus
                on:click=move |_| ui.ctrl.update(|c| *c = !*c)>"Ctrl"</button>
            {KEY_BAR.iter().map(|(name, data)| view! {
                <button aria-label=*name on:pointerdown=keep_focus on:click=move |_| ui.key_bar(data)>
                    {match *name { "Up" => "↑", "Down" => "↓", "Left" => "←", "Right" => "→", other => other }}
                </button>
            }).collect_view()}
        </div>
    }
}

/// Whether the system asks for a dark theme.
pub fn prefers_dark() -> bool {
    web_sys::window()
        .and_then(|w| w.match_media("(prefers-color-scheme: dark)").ok().flatten())
        .is_some_and(|m| m.matches())
}

fn watch_color_scheme(ui: Ui) {
    let Some(mq) = web_sys::window().and_then(|w| w.match_media("(prefers-color-scheme: dark)").ok().flatten()) else {
        return;
    };
    let cb = Closure::<dyn FnMut(web_sys::MediaQueryListEvent)>::new(move |e: web_sys::MediaQueryListEvent| {
        ui.set_dark(e.matches())
    });
    let _ = mq.add_event_listener_with_callback("change", cb.as_ref().unchecked_ref());
    cb.forget();
}

/// `window.porthole.screen(i)`: the text of tab `i`'s terminal; `window.porthole.size(i)`: its `[cols, rows]`.
/// For end-to-end tests and debugging; renderer-independent (WebGL draws no DOM text).
fn install_test_hook(ui: Ui) {
    let Some(w) = web_sys::window() else { return };
    let hook = js_sys::Object::new();
    let screen = Closure::<dyn Fn(u32) -> JsValue>::new(move |i: u32| {
        ui.screen_text(i as usize).map(JsValue::from).unwrap_or(JsValue::NULL)
    });
    let size = Closure::<dyn Fn(u32) -> JsValue>::new(move |i: u32| {
        let key = ui.keys().get(i as usize).copied();
        key.and_then(|k| ui.with_xterm(k, |x| js_sys::Array::of2(&x.cols().into(), &x.rows().into()).into()))
            .unwrap_or(JsValue::NULL)
    });
    let _ = js_sys::Reflect::set(&hook, &"screen".into(), screen.as_ref());
    let _ = js_sys::Reflect::set(&hook, &"size".into(), size.as_ref());
    let _ = js_sys::Reflect::set(&w, &"porthole".into(), &hook);
    screen.forget();
    size.forget();
}
