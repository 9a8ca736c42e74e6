//! The UI: top bar with the connection state, container picker, tab bar and terminal panes.

use std::collections::HashMap;

use app::protocol::{
    self, ContainerSummary, ContainersChanged, Exit, ExitReason, Input, Resize, StartTerminal, TerminalBytes,
    TerminalId, TerminalStarted, event,
};
use js_sys::Function;
use leptos::prelude::*;
use leptos::task::spawn_local;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use crate::socket::{Client, ConnState};
use crate::term::Xterm;

/// What a tab's terminal is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TabState {
    Starting,
    Running,
    /// Running on the server, but this page is (re)connecting to it; typed input waits.
    Resuming,
    /// Ended; the short marker for the tab title and the sentence for the pane.
    Ended {
        marker: String,
        detail: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TabKey(u32);

/// Where a terminal's output stream stands in this page (absolute offsets).
#[derive(Debug, Default, Clone, Copy)]
struct FlowCount {
    /// End of the bytes received (what a resume asks for).
    received: u64,
    /// End of the bytes xterm has parsed (what flow control acknowledges).
    parsed: u64,
    acked: u64,
    in_flight: u32,
}

/// Bytes of input kept per tab while it resumes; more is dropped.
const MAX_PENDING_INPUT: usize = 64 * 1024;

/// Acknowledge parsed output at least this often (well below the server's low watermark).
const ACK_EVERY_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone)]
struct Tab {
    key: TabKey,
    container_id: String,
    container_name: String,
    terminal: RwSignal<Option<TerminalId>>,
    state: RwSignal<TabState>,
    /// Sockets following this terminal (this one included).
    viewers: RwSignal<usize>,
    /// A terminal to re-attach to when the tab's xterm is ready (restored after a reload).
    restore: Option<TerminalId>,
}

/// Everything the UI shares; `Copy` handles only, so closures can capture it freely.
#[derive(Clone, Copy)]
struct Ui {
    client: StoredValue<Client, LocalStorage>,
    xterms: StoredValue<HashMap<u32, Xterm>, LocalStorage>,
    /// Which tab shows which terminal.
    routes: StoredValue<HashMap<TerminalId, u32>, LocalStorage>,
    /// Input typed while a tab was resuming, sent once it is attached again (at most [`MAX_PENDING_INPUT`]).
    pending_input: StoredValue<HashMap<u32, Vec<u8>>, LocalStorage>,
    /// Output flow control per terminal: bytes parsed by xterm, bytes acknowledged, writes in flight.
    flows: StoredValue<HashMap<TerminalId, FlowCount>, LocalStorage>,
    tabs: RwSignal<Vec<Tab>>,
    active: RwSignal<Option<TabKey>>,
    next_key: StoredValue<u32>,
    notice: RwSignal<Option<String>>,
    conn: RwSignal<ConnState>,
    /// Why the server refused this browser's credential, while signed out.
    auth_problem: RwSignal<Option<String>>,
    /// Who this browser is signed in as (from `hello`).
    user: RwSignal<Option<String>>,
    dark: RwSignal<bool>,
}

fn prefers_dark() -> bool {
    web_sys::window()
        .and_then(|w| w.match_media("(prefers-color-scheme: dark)").ok().flatten())
        .is_some_and(|m| m.matches())
}

fn exit_text(exit: &Exit) -> (String, String) {
    match exit.reason {
        ExitReason::Exited => match exit.exit_code {
            Some(0) => ("exited".into(), "The process exited.".into()),
            Some(c) => (format!("exit {c}"), format!("The process exited with code {c}.")),
            None => ("exited".into(), "The process exited.".into()),
        },
        ExitReason::ContainerStopped => ("stopped".into(), "The container stopped.".into()),
        ExitReason::Closed => ("closed".into(), "The terminal was closed.".into()),
        ExitReason::DockerUnavailable => ("docker down".into(), "The Docker daemon stopped answering.".into()),
        ExitReason::ServerShutdown => ("server stopped".into(), "The Porthole server shut down.".into()),
        ExitReason::Disconnected => ("disconnected".into(), "The connection to Porthole was lost.".into()),
        ExitReason::Abandoned => ("abandoned".into(), "Nobody came back to the terminal in time; it was ended.".into()),
    }
}

impl Ui {
    fn new() -> Ui {
        Ui {
            client: StoredValue::new_local(Client::connect(&crate::socket::client_id())),
            xterms: StoredValue::new_local(HashMap::new()),
            routes: StoredValue::new_local(HashMap::new()),
            flows: StoredValue::new_local(HashMap::new()),
            pending_input: StoredValue::new_local(HashMap::new()),
            tabs: RwSignal::new(Vec::new()),
            active: RwSignal::new(None),
            next_key: StoredValue::new(1),
            notice: RwSignal::new(None),
            conn: RwSignal::new(ConnState::Connecting),
            auth_problem: RwSignal::new(None),
            user: RwSignal::new(None),
            dark: RwSignal::new(prefers_dark()),
        }
    }

    fn client(&self) -> Client {
        self.client.get_value()
    }

    fn tab(&self, key: TabKey) -> Option<Tab> {
        self.tabs.with_untracked(|t| t.iter().find(|t| t.key == key).cloned())
    }

    fn with_xterm<R>(&self, key: TabKey, f: impl FnOnce(&mut Xterm) -> R) -> Option<R> {
        let mut out = None;
        self.xterms.update_value(|m| out = m.get_mut(&key.0).map(f));
        out
    }

    /// Opens a new tab with a terminal in `container`. The terminal starts once its pane is on screen
    /// (so its size is known).
    fn open_tab(&self, container_id: String, container_name: String) {
        let key = TabKey(self.next_key.get_value());
        self.next_key.set_value(key.0 + 1);
        self.notice.set(None);
        let tab = Tab {
            key,
            container_id,
            container_name,
            terminal: RwSignal::new(None),
            state: RwSignal::new(TabState::Starting),
            viewers: RwSignal::new(1),
            restore: None,
        };
        self.tabs.update(|t| t.push(tab));
        self.activate(key);
    }

    /// Brings back a tab for a terminal of this client that is still running on the server.
    fn restore_tab(&self, info: protocol::TerminalInfo) {
        let known = self.routes.with_value(|r| r.contains_key(&info.terminal_id))
            || self.tabs.with_untracked(|t| t.iter().any(|t| t.restore.as_ref() == Some(&info.terminal_id)));
        if known {
            return;
        }
        let key = TabKey(self.next_key.get_value());
        self.next_key.set_value(key.0 + 1);
        let tab = Tab {
            key,
            container_id: info.container_id,
            container_name: info.container_name,
            terminal: RwSignal::new(None),
            state: RwSignal::new(TabState::Starting),
            viewers: RwSignal::new(info.attached + 1),
            restore: Some(info.terminal_id),
        };
        self.tabs.update(|t| t.push(tab));
        if self.active.get_untracked().is_none() {
            self.activate(key);
        }
    }

    /// Follows `id` in tab `key` from `since` (absent: all the output the server still has).
    fn attach(&self, key: TabKey, id: TerminalId, since: Option<u64>) {
        let Some(tab) = self.tab(key) else { return };
        let ui = *self;
        spawn_local(async move {
            let req = protocol::AttachTerminal { terminal_id: id.clone(), since, flow_control: true };
            let reply: Result<protocol::TerminalAttached, _> = ui.client().request(event::ATTACH_TERMINAL, &req).await;
            if ui.tab(key).is_none() {
                // The tab was closed while attaching: end the terminal as closing a tab does.
                if reply.is_ok() {
                    let close = protocol::CloseTerminal { terminal_id: id };
                    let _: Result<protocol::TerminalAck, _> = ui.client().request(event::CLOSE_TERMINAL, &close).await;
                }
                return;
            }
            match reply {
                Ok(a) => {
                    ui.flows.update_value(|f| {
                        f.insert(
                            id.clone(),
                            FlowCount { received: a.offset, parsed: a.offset, acked: a.offset, in_flight: 0 },
                        );
                    });
                    ui.routes.update_value(|r| {
                        r.insert(id.clone(), key.0);
                    });
                    if a.truncated {
                        ui.with_xterm(key, |x| x.write_str("\r\n\x1b[2m[earlier output no longer kept]\x1b[0m\r\n"));
                    }
                    tab.terminal.set(Some(id.clone()));
                    tab.state.set(TabState::Running);
                    ui.send_pending_input(key);
                    // Make the terminal fit this window.
                    if let Some((c, r)) = ui.with_xterm(key, |x| (x.cols() as u16, x.rows() as u16))
                        && protocol::dimension_ok(c)
                        && protocol::dimension_ok(r)
                        && !a.ended
                    {
                        ui.client().emit(event::RESIZE, &Resize { terminal_id: id, cols: c, rows: r });
                    }
                }
                // The connection dropped again meanwhile: the next reconnect retries.
                Err(e) if e.code == protocol::ErrorCode::Internal => {}
                Err(e) => {
                    let detail = format!("The terminal could not be resumed: {}", e.message);
                    ui.with_xterm(key, |x| x.write_str(&format!("\r\n\x1b[2m[{detail}]\x1b[0m\r\n")));
                    tab.state.set(TabState::Ended { marker: "lost".into(), detail });
                }
            }
        });
    }

    /// After a reconnect: every running tab resumes from the last byte it received.
    fn resume_all(&self) {
        let tabs: Vec<Tab> = self.tabs.with_untracked(|t| t.to_vec());
        for tab in tabs {
            if !matches!(tab.state.get_untracked(), TabState::Running | TabState::Resuming) {
                continue;
            }
            let Some(id) = tab.terminal.get_untracked() else { continue };
            let since = self.flows.with_value(|f| f.get(&id).map(|c| c.received));
            self.attach(tab.key, id, since);
        }
    }

    /// Starts (or restarts) the terminal of a tab whose xterm exists.
    fn start_terminal(&self, key: TabKey) {
        let Some(tab) = self.tab(key) else { return };
        let Some((cols, rows)) = self.with_xterm(key, |x| (x.cols() as u16, x.rows() as u16)) else {
            return;
        };
        tab.state.set(TabState::Starting);
        let ui = *self;
        spawn_local(async move {
            let req = StartTerminal {
                container_id: tab.container_id.clone(),
                cols: protocol::dimension_ok(cols).then_some(cols),
                rows: protocol::dimension_ok(rows).then_some(rows),
                command: None,
                flow_control: true,
            };
            let reply: Result<TerminalStarted, _> = ui.client().request(event::START_TERMINAL, &req).await;
            match reply {
                Ok(started) => {
                    if ui.tab(key).is_none() {
                        // The tab was closed while the terminal started.
                        let close = protocol::CloseTerminal { terminal_id: started.terminal_id };
                        let _: Result<protocol::TerminalAck, _> =
                            ui.client().request(event::CLOSE_TERMINAL, &close).await;
                        return;
                    }
                    ui.routes.update_value(|r| {
                        r.insert(started.terminal_id.clone(), key.0);
                    });
                    ui.flows.update_value(|f| {
                        f.insert(started.terminal_id.clone(), FlowCount::default());
                    });
                    tab.terminal.set(Some(started.terminal_id.clone()));
                    tab.state.set(TabState::Running);
                    ui.send_pending_input(key);
                    // The pane may have changed size while the terminal started.
                    let now = ui.with_xterm(key, |x| (x.cols() as u16, x.rows() as u16));
                    if let Some((c, r)) = now
                        && (c, r) != (started.cols, started.rows)
                        && protocol::dimension_ok(c)
                        && protocol::dimension_ok(r)
                    {
                        ui.client().emit(event::RESIZE, &Resize { terminal_id: started.terminal_id, cols: c, rows: r });
                    }
                    if ui.active.get_untracked() == Some(key) {
                        ui.with_xterm(key, |x| x.focus());
                    }
                }
                Err(e) => {
                    ui.pending_input.update_value(|p| {
                        p.remove(&key.0);
                    });
                    // Nothing to show in a tab that never had a terminal: say why where the user clicked.
                    let had_output = tab.terminal.get_untracked().is_some();
                    if had_output {
                        let (marker, detail) = ("failed".to_string(), e.message.clone());
                        ui.with_xterm(key, |x| x.write_str(&format!("\r\n\x1b[31m{detail}\x1b[0m\r\n")));
                        tab.state.set(TabState::Ended { marker, detail });
                    } else {
                        ui.notice.set(Some(e.message));
                        ui.remove_tab(key);
                    }
                }
            }
        });
    }

    /// Gives the keyboard back to the visible terminal (after clicks on the tab bar, closes, ...).
    fn focus_active(&self) {
        let ui = *self;
        request_animation_frame(move || {
            if let Some(key) = ui.active.get_untracked() {
                ui.with_xterm(key, |x| x.focus());
            }
        });
    }

    fn activate(&self, key: TabKey) {
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
        let keys: Vec<TabKey> = self.tabs.with_untracked(|t| t.iter().map(|t| t.key).collect());
        if keys.is_empty() {
            return;
        }
        let at = self.active.get_untracked().and_then(|a| keys.iter().position(|k| *k == a)).unwrap_or(0) as i32;
        let next = (at + step).rem_euclid(keys.len() as i32) as usize;
        self.activate(keys[next]);
    }

    /// Closes a tab: its terminal session ends on the server (no process left behind).
    fn close_tab(&self, key: TabKey) {
        if let Some(tab) = self.tab(key)
            && let Some(id) = tab.terminal.get_untracked()
            && matches!(tab.state.get_untracked(), TabState::Running | TabState::Resuming)
        {
            let client = self.client();
            spawn_local(async move {
                let _: Result<protocol::TerminalAck, _> =
                    client.request(event::CLOSE_TERMINAL, &protocol::CloseTerminal { terminal_id: id }).await;
            });
        }
        self.remove_tab(key);
    }

    fn remove_tab(&self, key: TabKey) {
        let keys: Vec<TabKey> = self.tabs.with_untracked(|t| t.iter().map(|t| t.key).collect());
        let pos = keys.iter().position(|k| *k == key);
        if let Some(tab) = self.tab(key)
            && let Some(id) = tab.terminal.get_untracked()
        {
            self.routes.update_value(|r| {
                r.remove(&id);
            });
            self.flows.update_value(|f| {
                f.remove(&id);
            });
        }
        self.xterms.update_value(|m| {
            if let Some(mut x) = m.remove(&key.0) {
                x.dispose();
            }
        });
        self.pending_input.update_value(|p| {
            p.remove(&key.0);
        });
        self.tabs.update(|t| t.retain(|t| t.key != key));
        if self.active.get_untracked() != Some(key) {
            self.focus_active();
        } else {
            self.active.set(None);
            let remaining: Vec<TabKey> = self.tabs.with_untracked(|t| t.iter().map(|t| t.key).collect());
            if let Some(p) = pos
                && !remaining.is_empty()
            {
                self.activate(remaining[p.min(remaining.len() - 1)]);
            }
        }
    }

    fn on_output(&self, id: TerminalId, offset: u64, data: js_sys::Uint8Array) {
        let Some(key) = self.routes.with_value(|r| r.get(&id).copied()) else {
            return;
        };
        let len = u64::from(data.length());
        // Offsets make a resume exact: skip what is already on screen, say so if something is missing.
        let mut skip = 0u64;
        let mut gap = 0u64;
        self.flows.update_value(|f| {
            let c = f.entry(id.clone()).or_default();
            if offset < c.received {
                skip = (c.received - offset).min(len);
            } else if offset > c.received {
                gap = offset - c.received;
            }
            c.received = c.received.max(offset + len);
            if skip < len {
                c.in_flight += 1;
            }
        });
        if skip >= len {
            return;
        }
        let data = if skip > 0 { data.subarray(skip as u32, len as u32) } else { data };
        let end = offset + len;
        let ui = *self;
        if gap > 0 {
            self.with_xterm(TabKey(key), |x| x.write_str("\r\n\x1b[2m[some output was lost]\x1b[0m\r\n"));
        }
        // Acknowledge once xterm has parsed the bytes, so a flood waits for the screen instead of piling up.
        self.with_xterm(TabKey(key), |x| x.write_then(&data, move || ui.parsed(id, end)));
    }

    fn parsed(&self, id: TerminalId, end: u64) {
        let mut ack = None;
        self.flows.update_value(|f| {
            if let Some(c) = f.get_mut(&id) {
                c.parsed = c.parsed.max(end);
                c.in_flight = c.in_flight.saturating_sub(1);
                if c.parsed - c.acked >= ACK_EVERY_BYTES || (c.in_flight == 0 && c.parsed > c.acked) {
                    c.acked = c.parsed;
                    ack = Some(c.parsed);
                }
            }
        });
        if let Some(processed) = ack {
            self.client().emit(event::OUTPUT_ACK, &protocol::OutputAck { terminal_id: id, processed });
        }
    }

    fn on_exit(&self, exit: Exit) {
        let Some(key) = self.routes.with_value(|r| r.get(&exit.terminal_id).copied()) else {
            return;
        };
        let key = TabKey(key);
        let (marker, detail) = exit_text(&exit);
        self.with_xterm(key, |x| x.write_str(&format!("\r\n\x1b[2m[{detail}]\x1b[0m\r\n")));
        if let Some(tab) = self.tab(key) {
            tab.state.set(TabState::Ended { marker, detail });
        }
        self.routes.update_value(|r| {
            r.remove(&exit.terminal_id);
        });
        self.flows.update_value(|f| {
            f.remove(&exit.terminal_id);
        });
    }

    fn on_viewers(&self, v: protocol::TerminalViewers) {
        if let Some(key) = self.routes.with_value(|r| r.get(&v.terminal_id).copied())
            && let Some(tab) = self.tab(TabKey(key))
        {
            tab.viewers.set(v.attached);
        }
    }

    /// Creates the xterm for a tab in `el`, wires its input and size to the server, then starts the terminal.
    fn mount_xterm(&self, key: TabKey, el: web_sys::HtmlElement) {
        let mut x = Xterm::open(el, self.dark.get_untracked());
        let ui = *self;
        let on_data = Closure::<dyn FnMut(String)>::new(move |data: String| ui.send_input(key, data.into_bytes()));
        x.listen("onData", on_data.as_ref().unchecked_ref());
        // Binary data (some mouse reports): one byte per character.
        let on_binary = Closure::<dyn FnMut(String)>::new(move |data: String| {
            ui.send_input(key, data.chars().map(|c| c as u32 as u8).collect())
        });
        x.listen("onBinary", on_binary.as_ref().unchecked_ref());
        let on_resize = Closure::<dyn FnMut(JsValue)>::new(move |size: JsValue| {
            let get = |k: &str| js_sys::Reflect::get(&size, &k.into()).ok().and_then(|v| v.as_f64()).unwrap_or(0.0);
            let (cols, rows) = (get("cols") as u16, get("rows") as u16);
            if let Some(tab) = ui.tab(key)
                && let Some(id) = tab.terminal.get_untracked()
                && tab.state.get_untracked() == TabState::Running
                && protocol::dimension_ok(cols)
                && protocol::dimension_ok(rows)
            {
                ui.client().emit(event::RESIZE, &Resize { terminal_id: id, cols, rows });
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
        self.xterms.update_value(|m| {
            m.insert(key.0, x);
        });
        match self.tab(key).and_then(|t| t.restore) {
            Some(id) => self.attach(key, id, None),
            None => self.start_terminal(key),
        }
    }

    fn send_input(&self, key: TabKey, data: Vec<u8>) {
        let Some(tab) = self.tab(key) else { return };
        let state = tab.state.get_untracked();
        if matches!(state, TabState::Resuming | TabState::Starting) {
            // Keys typed right after opening, reopening or a reconnect reach the shell once it runs.
            self.pending_input.update_value(|p| {
                let q = p.entry(key.0).or_default();
                let room = MAX_PENDING_INPUT.saturating_sub(q.len());
                q.extend_from_slice(&data[..data.len().min(room)]);
            });
            return;
        }
        let Some(id) = tab.terminal.get_untracked() else { return };
        if state != TabState::Running {
            return;
        }
        for chunk in data.chunks(protocol::MAX_INPUT_BYTES) {
            let input = Input { terminal_id: id.clone(), data: TerminalBytes(chunk.to_vec().into()) };
            self.client().emit(event::INPUT, &input);
        }
    }

    /// Sends what was typed while the tab was starting or resuming.
    fn send_pending_input(&self, key: TabKey) {
        let mut typed = Vec::new();
        self.pending_input.update_value(|p| typed = p.remove(&key.0).unwrap_or_default());
        if !typed.is_empty() {
            self.send_input(key, typed);
        }
    }

    fn fit_active(&self) {
        if let Some(key) = self.active.get_untracked() {
            self.with_xterm(key, |x| x.fit());
        }
    }

    fn set_dark(&self, dark: bool) {
        self.dark.set(dark);
        self.xterms.update_value(|m| m.values().for_each(|x| x.set_dark(dark)));
    }

    /// Plain-text screen of the tab at `index` (test and debugging hook: `window.porthole.screen(i)`).
    fn screen_text(&self, index: usize) -> Option<String> {
        let key = self.tabs.with_untracked(|t| t.get(index).map(|t| t.key))?;
        self.with_xterm(key, |x| x.text())
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
    let containers: RwSignal<Option<Result<Vec<ContainerSummary>, String>>> = RwSignal::new(None);
    let refresh = move || {
        spawn_local(async move {
            let list = app::api::list_containers().await.map_err(|e| match e {
                leptos::prelude::ServerFnError::ServerError(m) => m,
                other => other.to_string(),
            });
            containers.set(Some(list));
        });
    };
    refresh();

    let client = ui.client();
    client.on_output(move |id, offset, data| ui.on_output(id, offset, data));
    client.on(event::TERMINAL_VIEWERS, move |v: protocol::TerminalViewers| ui.on_viewers(v));
    // The socket dropped: keystrokes now would reach a socket not attached yet, so they wait for the resume.
    client.on_disconnect(move || {
        ui.tabs.with_untracked(|tabs| {
            for t in tabs.iter().filter(|t| t.state.get_untracked() == TabState::Running) {
                t.state.set(TabState::Resuming);
            }
        });
    });
    // First connect: bring back this client's running terminals (a reload, a second window). Reconnects:
    // resume every tab from the last byte it got.
    let connects = StoredValue::new(0u32);
    client.on_connect(move || {
        let n = connects.get_value();
        connects.set_value(n + 1);
        if n == 0 {
            spawn_local(async move {
                if let Ok(list) = app::api::list_terminals().await {
                    let mine = format!("client:{}", crate::socket::client_id());
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
    client.on(event::EXIT, move |exit: Exit| ui.on_exit(exit));
    // Coalesce bursts of container events into one refresh.
    let pending = StoredValue::new(false);
    client.on(event::CONTAINERS_CHANGED, move |_: ContainersChanged| {
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
    client.on(event::HELLO, move |hello: protocol::Hello| ui.user.set(Some(hello.user)));
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
                let current = ui.active.get_untracked().and_then(|k| ui.tab(k));
                if let Some(t) = current {
                    ui.open_tab(t.container_id, t.container_name);
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
                if let Some(k) = ui.tabs.with_untracked(|t| t.get(i).map(|t| t.key)) {
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

    view! {
        <div class="app">
            <header class="topbar">
                <span class="brand"><span class="brand-dot"></span>"Porthole"</span>
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
            <main class="main">
                <TabBar ui=ui />
                <div class="panes">
                    <Show when=move || ui.tabs.with(|t| t.is_empty())>
                        <div class="welcome">
                            <h1>"Pick a container"</h1>
                            <span>"Its shell opens here, in a new tab."</span>
                        </div>
                    </Show>
                    <For each=move || ui.tabs.get() key=|t| t.key.0 let:tab>
                        <Pane ui=ui tab=tab />
                    </For>
                </div>
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
fn Picker(ui: Ui, containers: RwSignal<Option<Result<Vec<ContainerSummary>, String>>>) -> impl IntoView {
    let filter = RwSignal::new(String::new());
    let shown = move || {
        let needle = filter.get().to_lowercase();
        match containers.get() {
            Some(Ok(list)) => Ok(list
                .into_iter()
                .filter(|c| {
                    needle.is_empty()
                        || c.name.to_lowercase().contains(&needle)
                        || c.image.to_lowercase().contains(&needle)
                })
                .collect::<Vec<_>>()),
            Some(Err(e)) => Err(e),
            None => Ok(Vec::new()),
        }
    };
    view! {
        <aside class="sidebar">
            <h2>"Containers"</h2>
            <input class="filter" type="search" placeholder="Filter by name or image" aria-label="Filter containers"
                prop:value=move || filter.get()
                on:input=move |ev| filter.set(event_target_value(&ev)) />
            {move || ui.notice.get().map(|n| view! { <div class="notice" role="alert" data-testid="notice">{n}</div> })}
            {move || match shown() {
                Err(e) => view! { <div class="notice" role="alert">{e}</div> }.into_any(),
                Ok(list) if list.is_empty() && containers.with(|c| c.is_some()) => {
                    view! { <div class="empty">"No containers match."</div> }.into_any()
                }
                Ok(list) => view! {
                    <ul class="containers" data-testid="containers">
                        {list.into_iter().map(|c| {
                            let (id, name) = (c.id.clone(), c.name.clone());
                            view! {
                                <li>
                                    <button class="container" data-state=c.state.clone() data-name=c.name.clone()
                                        title=format!("{} · {}", c.image, c.status)
                                        on:click=move |_| ui.open_tab(id.clone(), name.clone())>
                                        <span class="dot"></span>
                                        <span class="name">{c.name.clone()}</span>
                                        <span class="meta">{format!("{} · {}", c.image, c.status)}</span>
                                    </button>
                                </li>
                            }
                        }).collect_view()}
                    </ul>
                }.into_any(),
            }}
        </aside>
    }
}

#[component]
fn TabBar(ui: Ui) -> impl IntoView {
    view! {
        <nav class="tabs" role="tablist">
            <For each=move || ui.tabs.get() key=|t| t.key.0 let:tab>
                {
                    let key = tab.key;
                    let state = tab.state;
                    view! {
                        <div class="tab" role="tab" data-testid="tab"
                            aria-selected=move || (ui.active.get() == Some(key)).to_string()
                            on:click=move |_| ui.activate(key)>
                            <span class="title">{tab.container_name.clone()}</span>
                            {move || (tab.viewers.get() > 1).then(|| view! {
                                <span class="viewers" data-testid="viewers" title="Sockets following this terminal">
                                    {format!("👥 {}", tab.viewers.get())}
                                </span>
                            })}
                            {move || match state.get() {
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
fn Pane(ui: Ui, tab: Tab) -> impl IntoView {
    let key = tab.key;
    let el = NodeRef::<leptos::html::Div>::new();
    el.on_load(move |div| {
        let el: web_sys::HtmlElement = div.into();
        // Measure with the real font: wait for it before xterm sizes its cells.
        spawn_local(async move {
            if let Some(doc) = web_sys::window().and_then(|w| w.document()) {
                let _ = wasm_bindgen_futures::JsFuture::from(doc.fonts().load("14px \"JetBrains Mono\"")).await;
            }
            // The tab may have been closed while the font loaded.
            if ui.tab(key).is_some() {
                ui.mount_xterm(key, el);
            }
        });
    });
    let state = tab.state;
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
        let key = ui.tabs.with_untracked(|t| t.get(i as usize).map(|t| t.key));
        key.and_then(|k| ui.with_xterm(k, |x| js_sys::Array::of2(&x.cols().into(), &x.rows().into()).into()))
            .unwrap_or(JsValue::NULL)
    });
    let _ = js_sys::Reflect::set(&hook, &"screen".into(), screen.as_ref());
    let _ = js_sys::Reflect::set(&hook, &"size".into(), size.as_ref());
    let _ = js_sys::Reflect::set(&w, &"porthole".into(), &hook);
    screen.forget();
    size.forget();
}
