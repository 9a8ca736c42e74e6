//! The protocol-client logic of the tabs: start, attach, resume from the last byte, input (held while a tab
//! starts or resumes), output with flow-control acks, exits. The view components only call these.

use app::protocol::{self, Exit, ExitReason, Input, Resize, StartTerminal, TerminalBytes, TerminalId, event};
use leptos::prelude::*;
use leptos::task::spawn_local;

use crate::tabs::{FlowCount, TabKey, TabState, Ui};

/// Bytes of input kept per tab while it starts or resumes; more is dropped.
pub const MAX_PENDING_INPUT: usize = 64 * 1024;

/// Acknowledge parsed output at least this often (well below the server's low watermark).
const ACK_EVERY_BYTES: u64 = 64 * 1024;

pub fn exit_text(exit: &Exit) -> (String, String) {
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
        ExitReason::SandboxRemoved => ("sandbox removed".into(), "Its sandbox was removed.".into()),
        ExitReason::SandboxExpired => {
            ("sandbox expired".into(), "Its sandbox reached its time limit and was removed.".into())
        }
        ExitReason::Oom => ("out of memory".into(), "The container ran out of memory and was killed.".into()),
        ExitReason::NodeLost => ("node lost".into(), "The Porthole node that held this terminal is gone.".into()),
    }
}

impl Ui {
    /// Opens a new tab with a terminal in `container`. The terminal starts once its pane is on screen (so
    /// its size is known).
    pub fn open_tab(&self, container_id: String, container_name: String) {
        self.notice.set(None);
        let key = self.add_tab(container_id, container_name, 1, None);
        self.activate(key);
    }

    /// Opens a new tab whose terminal starts in a new sandbox of `profile`.
    pub fn open_sandbox_tab(&self, profile: String) {
        self.notice.set(None);
        let key = self.add_tab(String::new(), format!("new {profile} sandbox"), 1, None);
        self.with_tab(key, |t| t.sandbox = Some(profile));
        self.activate(key);
    }

    /// Names tab `key` after the container its terminal runs in.
    fn rename_tab(&self, key: TabKey, container_id: String, container_name: String) {
        if let Some(view) = self.view(key) {
            view.title.set(container_name.clone());
        }
        self.with_tab(key, |t| {
            t.container_id = container_id;
            t.container_name = container_name;
        });
    }

    /// Brings back a tab for a terminal of this client that is still running on the server.
    pub fn restore_tab(&self, info: protocol::TerminalInfo) {
        let known = self.tab_of(&info.terminal_id).is_some()
            || self.tabs.with_value(|t| t.values().any(|t| t.restore.as_ref() == Some(&info.terminal_id)));
        if known {
            return;
        }
        let key = self.add_tab(info.container_id, info.container_name, info.attached + 1, Some(info.terminal_id));
        if self.active.get_untracked().is_none() {
            self.activate(key);
        }
    }

    /// Sends the tab's current size for `id`, if it differs from `(cols, rows)` (or always, with `None`).
    fn send_size(&self, key: TabKey, id: TerminalId, had: Option<(u16, u16)>) {
        if let Some((c, r)) = self.with_xterm(key, |x| (x.cols() as u16, x.rows() as u16))
            && had != Some((c, r))
            && protocol::dimension_ok(c)
            && protocol::dimension_ok(r)
        {
            self.client().emit::<event::Resize>(&Resize { terminal_id: id, cols: c, rows: r });
        }
    }

    /// Follows `id` in tab `key` from `since` (absent: all the output the server still has).
    pub fn attach(&self, key: TabKey, id: TerminalId, since: Option<u64>) {
        let Some(view) = self.view(key) else { return };
        let ui = *self;
        spawn_local(async move {
            let req = protocol::AttachTerminal { terminal_id: id.clone(), since, flow_control: true };
            let reply = ui.client().request::<event::AttachTerminal>(&req).await;
            if ui.view(key).is_none() {
                // The tab was closed while attaching: end the terminal as closing a tab does.
                if reply.is_ok() {
                    let _ =
                        ui.client().request::<event::CloseTerminal>(&protocol::CloseTerminal { terminal_id: id }).await;
                }
                return;
            }
            match reply {
                Ok(a) => {
                    ui.with_tab(key, |t| t.flow = Some(FlowCount::from(a.offset)));
                    if a.truncated {
                        ui.with_xterm(key, |x| x.write_str("\r\n\x1b[2m[earlier output no longer kept]\x1b[0m\r\n"));
                    }
                    view.terminal.set(Some(id.clone()));
                    view.state.set(TabState::Running);
                    ui.send_pending_input(key);
                    // Make the terminal fit this window.
                    if !a.ended {
                        ui.send_size(key, id, None);
                    }
                }
                // The connection dropped again meanwhile: the next reconnect retries.
                Err(e) if e.code == protocol::ErrorCode::Internal => {}
                Err(e) => {
                    let detail = format!("The terminal could not be resumed: {}", e.message);
                    ui.with_xterm(key, |x| x.write_str(&format!("\r\n\x1b[2m[{detail}]\x1b[0m\r\n")));
                    view.state.set(TabState::Ended { marker: "lost".into(), detail });
                }
            }
        });
    }

    /// The socket dropped: keystrokes now would reach a socket not attached yet, so they wait for the resume.
    pub fn suspend_all(&self) {
        self.tabs.with_value(|tabs| {
            for t in tabs.values().filter(|t| t.view.state.get_untracked() == TabState::Running) {
                t.view.state.set(TabState::Resuming);
            }
        });
    }

    /// After a reconnect: every running tab resumes from the last byte it received.
    pub fn resume_all(&self) {
        let resumes: Vec<(TabKey, TerminalId, Option<u64>)> = self.tabs.with_value(|tabs| {
            tabs.values()
                .filter(|t| matches!(t.view.state.get_untracked(), TabState::Running | TabState::Resuming))
                .filter_map(|t| Some((t.view.key, t.view.terminal.get_untracked()?, t.flow.map(|f| f.received))))
                .collect()
        });
        for (key, id, since) in resumes {
            self.attach(key, id, since);
        }
    }

    /// Starts (or restarts) the terminal of a tab whose xterm exists: in its container, or in a new sandbox.
    pub fn start_terminal(&self, key: TabKey) {
        let Some(view) = self.view(key) else { return };
        let Some((cols, rows)) = self.with_xterm(key, |x| (x.cols() as u16, x.rows() as u16)) else {
            return;
        };
        let Some((container_id, sandbox)) = self.with_tab(key, |t| (t.container_id.clone(), t.sandbox.take())) else {
            return;
        };
        view.state.set(TabState::Starting);
        let (cols, rows) = (protocol::dimension_ok(cols).then_some(cols), protocol::dimension_ok(rows).then_some(rows));
        let ui = *self;
        spawn_local(async move {
            let reply = match sandbox {
                Some(profile) => {
                    let req = protocol::CreateSandbox { profile, cols, rows, flow_control: true };
                    ui.client().request::<event::CreateSandbox>(&req).await.map(|created| {
                        ui.rename_tab(key, created.sandbox.id, created.sandbox.name);
                        ui.refresh_list();
                        created.terminal
                    })
                }
                None => {
                    let req = StartTerminal { container_id, cols, rows, command: None, flow_control: true, tty: true };
                    ui.client().request::<event::StartTerminal>(&req).await
                }
            };
            match reply {
                Ok(started) => {
                    if ui.view(key).is_none() {
                        // The tab was closed while the terminal started.
                        let close = protocol::CloseTerminal { terminal_id: started.terminal_id };
                        let _ = ui.client().request::<event::CloseTerminal>(&close).await;
                        return;
                    }
                    ui.with_tab(key, |t| t.flow = Some(FlowCount::default()));
                    view.terminal.set(Some(started.terminal_id.clone()));
                    view.state.set(TabState::Running);
                    ui.send_pending_input(key);
                    // The pane may have changed size while the terminal started.
                    ui.send_size(key, started.terminal_id, Some((started.cols, started.rows)));
                    if ui.active.get_untracked() == Some(key) {
                        ui.with_xterm(key, |x| x.focus());
                    }
                }
                Err(e) => {
                    ui.with_tab(key, |t| t.pending_input.clear());
                    // Nothing to show in a tab that never had a terminal: say why where the user clicked.
                    let had_terminal = view.terminal.get_untracked().is_some();
                    if had_terminal {
                        let (marker, detail) = ("failed".to_string(), e.message.clone());
                        ui.with_xterm(key, |x| x.write_str(&format!("\r\n\x1b[31m{detail}\x1b[0m\r\n")));
                        view.state.set(TabState::Ended { marker, detail });
                    } else {
                        ui.notice.set(Some(e.message));
                        ui.remove_tab(key);
                    }
                }
            }
        });
    }

    /// Asks for a container action (`start-container`, `stop-container`, `restart-container`) or a sandbox's
    /// removal; a refusal is shown as a notice.
    pub fn container_request<E>(&self, payload: E::Payload)
    where
        E: protocol::ClientEvent + 'static,
    {
        let ui = *self;
        spawn_local(async move {
            if let Err(e) = ui.client().request::<E>(&payload).await {
                ui.notice.set(Some(e.message));
            }
            ui.refresh_list();
        });
    }

    /// Closes a tab: its terminal session ends on the server (no process left behind).
    pub fn close_tab(&self, key: TabKey) {
        if let Some(view) = self.view(key)
            && let Some(id) = view.terminal.get_untracked()
            && matches!(view.state.get_untracked(), TabState::Running | TabState::Resuming)
        {
            let client = self.client();
            spawn_local(async move {
                let _ = client.request::<event::CloseTerminal>(&protocol::CloseTerminal { terminal_id: id }).await;
            });
        }
        self.remove_tab(key);
    }

    pub fn on_output(&self, id: TerminalId, offset: u64, data: js_sys::Uint8Array) {
        let Some(key) = self.tab_of(&id) else { return };
        let len = u64::from(data.length());
        // Offsets make a resume exact: skip what is already on screen, say so if something is missing.
        let (mut skip, mut gap) = (0u64, 0u64);
        self.with_tab(key, |t| {
            let c = t.flow.get_or_insert_with(FlowCount::default);
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
            self.with_xterm(key, |x| x.write_str("\r\n\x1b[2m[some output was lost]\x1b[0m\r\n"));
        }
        // Acknowledge once xterm has parsed the bytes, so a flood waits for the screen instead of piling up.
        self.with_xterm(key, |x| x.write_then(&data, move || ui.parsed(key, id, end)));
    }

    fn parsed(&self, key: TabKey, id: TerminalId, end: u64) {
        let ack = self
            .with_tab(key, |t| {
                let c = t.flow.as_mut()?;
                c.parsed = c.parsed.max(end);
                c.in_flight = c.in_flight.saturating_sub(1);
                if c.parsed - c.acked >= ACK_EVERY_BYTES || (c.in_flight == 0 && c.parsed > c.acked) {
                    c.acked = c.parsed;
                    return Some(c.parsed);
                }
                None
            })
            .flatten();
        if let Some(processed) = ack {
            self.client().emit::<event::OutputAck>(&protocol::OutputAck { terminal_id: id, processed });
        }
    }

    pub fn on_exit(&self, exit: Exit) {
        let Some(key) = self.tab_of(&exit.terminal_id) else { return };
        let (marker, detail) = exit_text(&exit);
        self.with_xterm(key, |x| x.write_str(&format!("\r\n\x1b[2m[{detail}]\x1b[0m\r\n")));
        if let Some(view) = self.view(key) {
            view.state.set(TabState::Ended { marker, detail });
        }
        self.with_tab(key, |t| t.flow = None);
    }

    pub fn on_viewers(&self, v: protocol::TerminalViewers) {
        if let Some(view) = self.tab_of(&v.terminal_id).and_then(|k| self.view(k)) {
            view.viewers.set(v.attached);
        }
    }

    /// Input from the keyboard or the key bar. With the key bar's Ctrl held, a letter becomes its control
    /// character (Ctrl then `c` is `^C`), and Ctrl is released.
    pub fn type_keys(&self, key: TabKey, data: Vec<u8>) {
        let data = if self.ctrl.get_untracked() && data.len() == 1 && data[0].is_ascii_alphabetic() {
            self.ctrl.set(false);
            vec![data[0].to_ascii_lowercase() & 0x1f]
        } else {
            data
        };
        self.send_input(key, data);
    }

    pub fn send_input(&self, key: TabKey, data: Vec<u8>) {
        let Some(view) = self.view(key) else { return };
        let state = view.state.get_untracked();
        if matches!(state, TabState::Resuming | TabState::Starting) {
            // Keys typed right after opening, reopening or a reconnect reach the shell once it runs.
            self.with_tab(key, |t| {
                let room = MAX_PENDING_INPUT.saturating_sub(t.pending_input.len());
                t.pending_input.extend_from_slice(&data[..data.len().min(room)]);
            });
            return;
        }
        let Some(id) = view.terminal.get_untracked() else { return };
        if state != TabState::Running {
            return;
        }
        for chunk in data.chunks(protocol::MAX_INPUT_BYTES) {
            let input =
                Input { terminal_id: id.clone(), data: TerminalBytes(chunk.to_vec().into()), eof: false, offset: None };
            self.client().emit::<event::Input>(&input);
        }
    }

    /// Sends what was typed while the tab was starting or resuming.
    fn send_pending_input(&self, key: TabKey) {
        let typed = self.with_tab(key, |t| std::mem::take(&mut t.pending_input)).unwrap_or_default();
        if !typed.is_empty() {
            self.send_input(key, typed);
        }
    }
}
