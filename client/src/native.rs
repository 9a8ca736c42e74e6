//! A Socket.IO v5 client over an Engine.IO v4 WebSocket, on tokio-tungstenite: the subset Porthole speaks
//! (namespace `/`, events, acks, binary attachments both ways), chosen with [`crate::Transport::Native`].
//!
//! Written because `rust_socketio` 0.6 splits binary frames at every byte 0x1e, says nothing when its transport
//! dies, mixes up acks whose random ids collide, leaves Nagle's algorithm on and reads 4 KiB at a time (see
//! `docs/architecture.md`). Here: `TCP_NODELAY`, tungstenite's large read buffer, ack ids counted per
//! connection, and the end of the socket reported as [`Incoming::Closed`](crate::Incoming::Closed).
//!
//! Wire format (Engine.IO v4 over WebSocket): text frames are `<type><data>` (0 open, 2 ping, 3 pong, 4
//! message); a binary frame is one attachment, raw. Socket.IO packets ride in messages: `0` connect, `1`
//! disconnect, `2` event, `3` ack, `4` connect error, `5` binary event, `6` binary ack, as
//! `<type>[<attachments>-][<ack id>]<json>`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::Error;

/// Attachments one binary packet may announce (Porthole's have one).
const MAX_ATTACHMENTS: usize = 16;
/// The WebSocket's sending half, written by whoever sends (no task in between: a keystroke goes out at once).
type Sink = Arc<
    tokio::sync::Mutex<
        futures_util::stream::SplitSink<
            tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
            Message,
        >,
    >,
>;

/// What the reader hands to the connection: an event (name, payload, its binary attachments in order).
pub(crate) type OnEvent = Box<dyn Fn(String, Value, Vec<Bytes>) + Send + Sync>;

type Acks = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// One connected socket.
pub(crate) struct Native {
    sink: Sink,
    acks: Acks,
    next_id: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Native {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Native").finish_non_exhaustive()
    }
}

/// `http(s)://host[:port][/path]` → `ws(s)://host[:port]/socket.io/?EIO=4&transport=websocket`.
fn ws_url(url: &str) -> Result<String, Error> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
        ("wss", r)
    } else if let Some(r) = url.strip_prefix("http://") {
        ("ws", r)
    } else {
        return Err(Error::Transport(format!("{url:?} must start with http:// or https://")));
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path = path.trim_end_matches('/');
    let path = if path.is_empty() || !path.ends_with("socket.io") { "socket.io".to_string() } else { path.to_string() };
    Ok(format!("{scheme}://{host}/{path}/?EIO=4&transport=websocket"))
}

/// One Socket.IO packet, parsed from an Engine.IO message.
#[derive(Debug, PartialEq)]
struct Packet {
    kind: u8,
    attachments: usize,
    id: Option<u64>,
    json: Value,
}

fn parse_packet(text: &str) -> Option<Packet> {
    let b = text.as_bytes();
    let kind = *b.first()?;
    let mut i = 1;
    let mut attachments = 0;
    if kind == b'5' || kind == b'6' {
        let dash = text[i..].find('-')? + i;
        attachments = text[i..dash].parse().ok()?;
        i = dash + 1;
    }
    // A namespace other than `/` would come here as `/nsp,`; Porthole uses only `/`.
    let digits = text[i..].bytes().take_while(u8::is_ascii_digit).count();
    let id = if digits > 0 { text[i..i + digits].parse().ok() } else { None };
    i += digits;
    let json = if i < text.len() { serde_json::from_str(&text[i..]).ok()? } else { Value::Null };
    Some(Packet { kind, attachments, id, json })
}

impl Native {
    /// Connects and signs in with `auth`; returns once the server accepted (or refused) the CONNECT.
    pub(crate) async fn connect(
        url: &str,
        auth: &Value,
        headers: &[(String, String)],
        tls: Option<native_tls::TlsConnector>,
        timeout: Duration,
        on_event: OnEvent,
        on_close: Box<dyn FnOnce() + Send>,
    ) -> Result<Native, Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = ws_url(url)?.into_client_request().map_err(|e| Error::Transport(format!("{url}: {e}")))?;
        for (k, v) in headers {
            let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| Error::Transport(e.to_string()))?;
            let value = v.parse().map_err(|e: tokio_tungstenite::tungstenite::http::header::InvalidHeaderValue| {
                Error::Transport(e.to_string())
            })?;
            request.headers_mut().insert(name, value);
        }
        let connector = tls.map(tokio_tungstenite::Connector::NativeTls);
        let config = WebSocketConfig::default();
        let (ws, _) = tokio::time::timeout(
            timeout,
            tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, connector),
        )
        .await
        .map_err(|_| Error::Timeout("the WebSocket handshake".into()))?
        .map_err(|e| Error::Transport(e.to_string()))?;
        let (mut sink, mut stream) = ws.split();
        // The Engine.IO open packet, then the Socket.IO CONNECT and its answer.
        let opened = tokio::time::timeout(timeout, async {
            while let Some(frame) = stream.next().await {
                match frame {
                    Ok(Message::Text(t)) if t.starts_with('0') => return Ok(()),
                    Ok(Message::Close(_)) | Err(_) => break,
                    _ => {}
                }
            }
            Err(Error::Transport("the server closed the connection before opening it".into()))
        })
        .await
        .map_err(|_| Error::Timeout("the Engine.IO open packet".into()))?;
        opened?;
        sink.send(Message::text(format!("40{auth}"))).await.map_err(|e| Error::Transport(e.to_string()))?;
        let answer = tokio::time::timeout(timeout, async {
            while let Some(frame) = stream.next().await {
                match frame {
                    Ok(Message::Text(t)) if t.starts_with("40") => return Ok(()),
                    Ok(Message::Text(t)) if t.starts_with("44") => {
                        let message = parse_packet(&t[1..])
                            .and_then(|p| p.json.get("message").and_then(Value::as_str).map(str::to_string))
                            .unwrap_or_else(|| t[2..].to_string());
                        return Err(Error::Refused(message));
                    }
                    Ok(Message::Text(t)) if t == "2" => {
                        let _ = sink.send(Message::text("3")).await;
                    }
                    Ok(Message::Close(_)) | Err(_) => break,
                    _ => {}
                }
            }
            Err(Error::Transport("the server closed the connection while signing in".into()))
        })
        .await
        .map_err(|_| Error::Timeout("the CONNECT answer".into()))?;
        answer?;

        let sink: Sink = Arc::new(tokio::sync::Mutex::new(sink));
        let acks: Acks = Arc::default();
        let (acks_r, pong) = (acks.clone(), sink.clone());
        let reader = tokio::spawn(async move {
            let mut pending: Option<(Packet, Vec<Bytes>)> = None;
            while let Some(Ok(frame)) = stream.next().await {
                let packet = match frame {
                    Message::Text(t) => match t.as_bytes().first() {
                        Some(b'2') => {
                            let _ = pong.lock().await.send(Message::text("3")).await;
                            continue;
                        }
                        Some(b'4') => match parse_packet(&t[1..]) {
                            Some(p) => p,
                            None => continue,
                        },
                        _ => continue,
                    },
                    Message::Binary(b) => {
                        if let Some((p, mut parts)) = pending.take() {
                            parts.push(b);
                            if parts.len() < p.attachments {
                                pending = Some((p, parts));
                                continue;
                            }
                            deliver(p, parts, &on_event, &acks_r);
                        }
                        continue;
                    }
                    Message::Close(_) => break,
                    _ => continue,
                };
                match packet.kind {
                    b'1' => break,
                    b'5' | b'6' if packet.attachments > 0 && packet.attachments <= MAX_ATTACHMENTS => {
                        pending = Some((packet, Vec::new()));
                    }
                    _ => deliver(packet, Vec::new(), &on_event, &acks_r),
                }
            }
            // Requests in flight get no answer: their senders see the channel closed at once.
            acks_r.lock().unwrap_or_else(|e| e.into_inner()).clear();
            on_close();
        });
        Ok(Native { sink, acks, next_id: AtomicU64::new(0), reader })
    }

    /// Sends an event; `ack` asks for an answer. `attachments` replace `{"_placeholder": true, "num": i}` in
    /// `args` (made by [`placeholder`]).
    pub(crate) async fn send(
        &self,
        name: &str,
        payload: Value,
        attachments: Vec<Bytes>,
        ack: bool,
    ) -> Result<Option<oneshot::Receiver<Value>>, Error> {
        let (id, rx) = if ack {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            self.acks.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
            (id.to_string(), Some(rx))
        } else {
            (String::new(), None)
        };
        let args = Value::Array(vec![Value::from(name), payload]);
        let text = if attachments.is_empty() {
            format!("42{id}{args}")
        } else {
            format!("45{}-{id}{args}", attachments.len())
        };
        let gone = |_| Error::Transport("the connection is closed".into());
        // One lock for the packet and its attachments: nothing may come between them.
        let mut sink = self.sink.lock().await;
        sink.feed(Message::text(text)).await.map_err(gone)?;
        for a in attachments {
            sink.feed(Message::Binary(a)).await.map_err(gone)?;
        }
        sink.flush().await.map_err(gone)?;
        Ok(rx)
    }

    /// Closes the socket (a Socket.IO disconnect, then the WebSocket).
    pub(crate) async fn disconnect(&self) {
        let mut sink = self.sink.lock().await;
        let _ = sink.send(Message::text("41")).await;
        let _ = sink.close().await;
        self.reader.abort();
    }
}

/// `{"_placeholder": true, "num": n}`, the stand-in for attachment `n` in a binary packet's JSON.
pub(crate) fn placeholder(n: usize) -> Value {
    serde_json::json!({ "_placeholder": true, "num": n })
}

fn deliver(mut p: Packet, attachments: Vec<Bytes>, on_event: &OnEvent, acks: &Acks) {
    match p.kind {
        b'2' | b'5' => {
            let Value::Array(mut args) = std::mem::take(&mut p.json) else { return };
            if args.is_empty() {
                return;
            }
            let name = match args.remove(0) {
                Value::String(s) => s,
                _ => return,
            };
            let payload = args.into_iter().next().unwrap_or(Value::Null);
            // Porthole's binary events carry one attachment, in the payload's `data`.
            on_event(name, payload, attachments);
        }
        b'3' | b'6' => {
            let Some(id) = p.id else { return };
            let tx = acks.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            if let (Some(tx), Value::Array(mut args)) = (tx, p.json) {
                let _ = tx.send(if args.is_empty() { Value::Null } else { args.remove(0) });
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_parse_with_attachments_and_ids() {
        let p = parse_packet(r#"51-["output",{"data":{"_placeholder":true,"num":0}}]"#).unwrap();
        assert_eq!((p.kind, p.attachments, p.id), (b'5', 1, None));
        let p = parse_packet(r#"312[{"terminalId":"t-1"}]"#).unwrap();
        assert_eq!((p.kind, p.id), (b'3', Some(12)));
        assert_eq!(p.json, serde_json::json!([{"terminalId": "t-1"}]));
        let p = parse_packet(r#"2["hello",{}]"#).unwrap();
        assert_eq!((p.kind, p.id), (b'2', None));
        assert!(parse_packet("").is_none());
        assert!(parse_packet("5x-[]").is_none());
    }

    #[test]
    fn urls_become_socket_io_websocket_urls() {
        assert_eq!(
            ws_url("http://127.0.0.1:7070").unwrap(),
            "ws://127.0.0.1:7070/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(ws_url("https://h:1/").unwrap(), "wss://h:1/socket.io/?EIO=4&transport=websocket");
        assert_eq!(ws_url("https://h/x/socket.io/").unwrap(), "wss://h/x/socket.io/?EIO=4&transport=websocket");
        assert!(ws_url("ftp://h").is_err());
    }
}
