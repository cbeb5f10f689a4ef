//! A small WebSocket client for tests: JSON frames in, JSON frames out.

#![allow(dead_code)]

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Client {
    pub socket: Socket,
}

/// What the next read produced.
#[derive(Debug)]
pub enum Next {
    Frame(Value),
    Closed(Option<u16>),
    Timeout,
}

impl Client {
    /// Connects with credentials as query parameters (the browser way).
    pub async fn connect(addr: &str, api_key: &str, token: &str) -> Client {
        let url = format!("ws://{addr}/v1/ws?api_key={api_key}&access_token={token}");
        let (socket, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connects");
        Client { socket }
    }

    pub async fn send(&mut self, frame: Value) {
        self.socket.send(Message::Text(frame.to_string().into())).await.expect("send frame");
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.socket.send(message).await.expect("send frame");
    }

    pub async fn next(&mut self, timeout: Duration) -> Next {
        loop {
            match tokio::time::timeout(timeout, self.socket.next()).await {
                Err(_) => return Next::Timeout,
                Ok(None) => return Next::Closed(None),
                Ok(Some(Err(_))) => return Next::Closed(None),
                Ok(Some(Ok(Message::Text(text)))) => {
                    return Next::Frame(serde_json::from_str(text.as_str()).expect("JSON frame"))
                }
                Ok(Some(Ok(Message::Close(frame)))) => return Next::Closed(frame.map(|f| f.code.into())),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// The next frame with `op`, skipping others; panics on close or timeout.
    pub async fn expect_op(&mut self, op: &str) -> Value {
        loop {
            match self.next(Duration::from_secs(10)).await {
                Next::Frame(frame) if frame["op"] == op => return frame,
                Next::Frame(_) => continue,
                other => panic!("waiting for {op}: {other:?}"),
            }
        }
    }
}
