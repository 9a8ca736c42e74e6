//! The UI's shared state: the tabs (one map of one struct each), the connection and the page settings.

use std::collections::BTreeMap;

use app::protocol::TerminalId;
use leptos::prelude::*;

use crate::socket::{Client, ConnState};
use crate::term::Xterm;

/// What a tab's terminal is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TabState {
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

/// Identifies a tab for as long as the page lives (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TabKey(u32);

/// Where a terminal's output stream stands in this page (absolute offsets).
#[derive(Debug, Default, Clone, Copy)]
pub struct FlowCount {
    /// End of the bytes received (what a resume asks for).
    pub received: u64,
    /// End of the bytes xterm has parsed (what flow control acknowledges).
    pub parsed: u64,
    pub acked: u64,
    pub in_flight: u32,
}

impl FlowCount {
    /// A stream whose first byte is `offset`.
    pub fn from(offset: u64) -> FlowCount {
        FlowCount { received: offset, parsed: offset, acked: offset, in_flight: 0 }
    }
}

/// What the view shows of a tab: cheap `Copy` signal handles.
#[derive(Debug, Clone, Copy)]
pub struct TabView {
    pub key: TabKey,
    pub state: RwSignal<TabState>,
    /// Sockets following this terminal (this one included).
    pub viewers: RwSignal<usize>,
    pub terminal: RwSignal<Option<TerminalId>>,
    /// What the tab bar calls it: its container's name.
    pub title: RwSignal<String>,
}

/// One tab: its container, its view signals, and what the protocol logic keeps for it.
pub struct Tab {
    pub view: TabView,
    pub container_id: String,
    pub container_name: String,
    /// A terminal to re-attach to when the tab's xterm is ready (restored after a reload).
    pub restore: Option<TerminalId>,
    /// A sandbox profile: the tab's terminal starts in a new sandbox of it (`create-sandbox`).
    pub sandbox: Option<String>,
    pub xterm: Option<Xterm>,
    /// The output stream, while a terminal is attached.
    pub flow: Option<FlowCount>,
    /// Input typed while the tab was starting or resuming, sent once it runs (at most
    /// [`crate::terminals::MAX_PENDING_INPUT`]).
    pub pending_input: Vec<u8>,
}

/// What the tab bar and panes list, in order.
#[derive(Debug, Clone)]
pub struct TabItem {
    pub view: TabView,
}

/// Everything the UI shares; `Copy` handles only, so closures can capture it freely.
#[derive(Clone, Copy)]
pub struct Ui {
    pub client: StoredValue<Client, LocalStorage>,
    pub tabs: StoredValue<BTreeMap<TabKey, Tab>, LocalStorage>,
    /// The tabs in display order (what the view renders).
    pub order: RwSignal<Vec<TabItem>>,
    pub active: RwSignal<Option<TabKey>>,
    pub next_key: StoredValue<u32>,
    pub notice: RwSignal<Option<String>>,
    pub conn: RwSignal<ConnState>,
    /// Why the server refused this browser's credential, while signed out.
    pub auth_problem: RwSignal<Option<String>>,
    /// Who this browser is signed in as (from `hello`).
    pub user: RwSignal<Option<String>>,
    pub dark: RwSignal<bool>,
    /// On narrow screens: whether the container drawer is open.
    pub drawer: RwSignal<bool>,
    /// The key bar's Ctrl is held for the next key.
    pub ctrl: RwSignal<bool>,
    /// Bumped to have the container list fetched again (after this window made, removed or managed one: Docker's
    /// events about a sandbox can come before it is this user's to see).
    pub list_version: RwSignal<u32>,
}

fn prefers_dark() -> bool {
    web_sys::window()
        .and_then(|w| w.match_media("(prefers-color-scheme: dark)").ok().flatten())
        .is_some_and(|m| m.matches())
}

impl Ui {
    pub fn new() -> Ui {
        Ui {
            client: StoredValue::new_local(Client::connect(&crate::socket::client_id())),
            tabs: StoredValue::new_local(BTreeMap::new()),
            order: RwSignal::new(Vec::new()),
            active: RwSignal::new(None),
            next_key: StoredValue::new(1),
            notice: RwSignal::new(None),
            conn: RwSignal::new(ConnState::Connecting),
            auth_problem: RwSignal::new(None),
            user: RwSignal::new(None),
            dark: RwSignal::new(prefers_dark()),
            drawer: RwSignal::new(false),
            ctrl: RwSignal::new(false),
            list_version: RwSignal::new(0),
        }
    }

    /// Fetches the container list again.
    pub fn refresh_list(&self) {
        self.list_version.update(|v| *v = v.wrapping_add(1));
    }

    pub fn client(&self) -> Client {
        self.client.get_value()
    }

    /// Adds a tab for `container` (to re-attach to `restore`, if given) at the end; returns its key.
    pub fn add_tab(
        &self,
        container_id: String,
        container_name: String,
        viewers: usize,
        restore: Option<TerminalId>,
    ) -> TabKey {
        let key = TabKey(self.next_key.get_value());
        self.next_key.set_value(key.0 + 1);
        let view = TabView {
            key,
            state: RwSignal::new(TabState::Starting),
            viewers: RwSignal::new(viewers),
            terminal: RwSignal::new(None),
            title: RwSignal::new(container_name.clone()),
        };
        let item = TabItem { view };
        let tab = Tab {
            view,
            container_id,
            container_name,
            restore,
            sandbox: None,
            xterm: None,
            flow: None,
            pending_input: Vec::new(),
        };
        self.tabs.update_value(|t| {
            t.insert(key, tab);
        });
        self.order.update(|o| o.push(item));
        key
    }

    /// Takes a tab away; returns it.
    pub fn take_tab(&self, key: TabKey) -> Option<Tab> {
        let mut taken = None;
        self.tabs.update_value(|t| taken = t.remove(&key));
        self.order.update(|o| o.retain(|i| i.view.key != key));
        taken
    }

    /// The tab's view handles, if it exists.
    pub fn view(&self, key: TabKey) -> Option<TabView> {
        self.tabs.with_value(|t| t.get(&key).map(|t| t.view))
    }

    /// Runs `f` on the tab, if it exists.
    pub fn with_tab<R>(&self, key: TabKey, f: impl FnOnce(&mut Tab) -> R) -> Option<R> {
        let mut out = None;
        self.tabs.update_value(|t| out = t.get_mut(&key).map(f));
        out
    }

    /// Runs `f` on the tab's xterm. The xterm is taken out of the map meanwhile, because xterm calls back
    /// synchronously (a fit fires `onResize`, whose handler looks at the tab).
    pub fn with_xterm<R>(&self, key: TabKey, f: impl FnOnce(&mut Xterm) -> R) -> Option<R> {
        let mut x = self.with_tab(key, |t| t.xterm.take()).flatten()?;
        let out = f(&mut x);
        let mut x = Some(x);
        self.with_tab(key, |t| t.xterm = x.take());
        if let Some(mut orphan) = x {
            // The tab was closed meanwhile.
            orphan.dispose();
        }
        Some(out)
    }

    /// The tab showing terminal `id`.
    pub fn tab_of(&self, id: &TerminalId) -> Option<TabKey> {
        self.tabs.with_value(|t| {
            t.values()
                .find(|t| t.flow.is_some() && t.view.terminal.get_untracked().as_ref() == Some(id))
                .map(|t| t.view.key)
        })
    }

    /// Keys in display order.
    pub fn keys(&self) -> Vec<TabKey> {
        self.order.with_untracked(|o| o.iter().map(|i| i.view.key).collect())
    }
}
