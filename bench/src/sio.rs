//! A minimal Socket.IO v5 client over one WebSocket (tokio-tungstenite), speaking just what the benchmark needs:
//! connect with `auth`, events with and without acks, binary `output` events, pings. It keeps the client's own
//! cost small and visible, so the numbers measure the server rather than a client library.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// What the server sent, in arrival order.
#[derive(Debug)]
pub enum Incoming {
    Output { terminal: String, offset: u64, data: Bytes },
    Exit { terminal: String },
    Other,
}

type Acks = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;
/// Who waits for the next output of a terminal, told the moment its frame is read (before any queueing).
type Watchers = Arc<Mutex<HashMap<String, oneshot::Sender<(std::time::Instant, Bytes)>>>>;

/// A connected socket. Incoming events arrive on the receiver returned by [`Client::connect`].
#[derive(Debug, Clone)]
pub struct Client {
    out: mpsc::UnboundedSender<Message>,
    acks: Acks,
    watchers: Watchers,
    next_ack: Arc<AtomicU64>,
}

fn text(m: &Message) -> Option<&str> {
    match m {
        Message::Text(t) => Some(t.as_str()),
        _ => None,
    }
}

impl Client {
    /// Connects to `base` (`http://host:port`) with the handshake `auth` and waits for the connect packet.
    pub async fn connect(base: &str, auth: &Value) -> anyhow::Result<(Client, mpsc::UnboundedReceiver<Incoming>)> {
        let url = format!("{}/socket.io/?EIO=4&transport=websocket", base.replacen("http", "ws", 1));
        // No Nagle, as browsers do for WebSockets: keystrokes go out at once.
        let (ws, _) = tokio_tungstenite::connect_async_with_config(&url, None, true)
            .await
            .with_context(|| format!("connecting {url}"))?;
        let (mut sink, mut stream) = ws.split();
        let open = stream.next().await.context("no Engine.IO open packet")??;
        if !text(&open).is_some_and(|t| t.starts_with('0')) {
            bail!("unexpected first packet {open:?}");
        }
        sink.send(Message::text(format!("40{auth}"))).await?;
        loop {
            let answer = stream.next().await.context("no connect answer")??;
            match text(&answer) {
                Some("2") => sink.send(Message::text("3")).await?,
                Some(t) if t.starts_with("40") => break,
                other => bail!("connect refused: {other:?}"),
            }
        }
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        let acks: Acks = Arc::default();
        let watchers: Watchers = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let client = Client {
            out: out.clone(),
            acks: acks.clone(),
            watchers: watchers.clone(),
            next_ack: Arc::new(AtomicU64::new(1)),
        };
        tokio::spawn(async move {
            // A binary event waits for its attachment frame.
            let mut pending: Option<(String, u64)> = None;
            while let Some(Ok(m)) = stream.next().await {
                match m {
                    Message::Binary(data) => {
                        if let Some((terminal, offset)) = pending.take() {
                            let waiter = watchers.lock().unwrap_or_else(|e| e.into_inner()).remove(&terminal);
                            if let Some(w) = waiter {
                                let _ = w.send((std::time::Instant::now(), data.clone()));
                            }
                            let _ = tx.send(Incoming::Output { terminal, offset, data });
                        }
                    }
                    Message::Text(t) => {
                        let t = t.as_str();
                        if t == "2" {
                            let _ = out.send(Message::text("3"));
                        } else if let Some(rest) = t.strip_prefix("451-") {
                            let v: Value = serde_json::from_str(rest).unwrap_or(Value::Null);
                            let terminal = v[1]["terminalId"].as_str().unwrap_or_default().to_string();
                            pending = Some((terminal, v[1]["offset"].as_u64().unwrap_or(0)));
                        } else if let Some(rest) = t.strip_prefix("43") {
                            let digits = rest.find('[').unwrap_or(0);
                            let id: u64 = rest[..digits].parse().unwrap_or(0);
                            let v: Value = serde_json::from_str(&rest[digits..]).unwrap_or(Value::Null);
                            if let Some(waiter) = acks.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) {
                                let _ = waiter.send(v[0].clone());
                            }
                        } else if let Some(rest) = t.strip_prefix("42") {
                            let v: Value = serde_json::from_str(rest).unwrap_or(Value::Null);
                            let incoming = if v[0] == "exit" {
                                Incoming::Exit { terminal: v[1]["terminalId"].as_str().unwrap_or_default().into() }
                            } else {
                                Incoming::Other
                            };
                            let _ = tx.send(incoming);
                        }
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
        });
        Ok((client, rx))
    }

    /// Emits an event without ack.
    pub fn emit(&self, name: &str, payload: &Value) {
        let _ = self.out.send(Message::text(format!("42{}", serde_json::json!([name, payload]))));
    }

    /// Emits an event and waits for its ack (at most `wait`).
    pub async fn request(&self, name: &str, payload: &Value, wait: Duration) -> anyhow::Result<Value> {
        let id = self.next_ack.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.acks.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        let _ = self.out.send(Message::text(format!("42{id}{}", serde_json::json!([name, payload]))));
        let reply = tokio::time::timeout(wait, rx).await.with_context(|| format!("no ack for {name}"))??;
        if let Some(e) = reply.get("error") {
            bail!("{name} refused: {e}");
        }
        Ok(reply)
    }

    /// Resolves with the arrival time and bytes of `terminal`'s next output event.
    pub fn next_output(&self, terminal: &str) -> oneshot::Receiver<(std::time::Instant, Bytes)> {
        let (tx, rx) = oneshot::channel();
        self.watchers.lock().unwrap_or_else(|e| e.into_inner()).insert(terminal.to_string(), tx);
        rx
    }

    /// Sends keystrokes.
    pub fn input(&self, terminal: &str, data: &str) {
        self.emit("input", &serde_json::json!({"terminalId": terminal, "data": data}));
    }

    /// Acknowledges output up to `processed` (flow control).
    pub fn ack_output(&self, terminal: &str, processed: u64) {
        self.emit("output-ack", &serde_json::json!({"terminalId": terminal, "processed": processed}));
    }
}
