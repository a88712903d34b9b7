//! A protocol v1 client for the `/ws` tests: numbered commands, replies matched by id,
//! pushes kept in order.

use std::collections::VecDeque;
use std::net::{Shutdown, SocketAddr};

use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::stream::MaybeTlsStream;

use super::{Client, connect, next_data};

pub struct Peer {
    pub ws: Client,
    next_id: u64,
    pub pushes: VecDeque<Value>,
}

impl Peer {
    pub fn connect(addr: SocketAddr) -> Peer {
        Peer {
            ws: connect(addr, "/ws"),
            next_id: 1,
            pushes: VecDeque::new(),
        }
    }

    /// The next JSON frame from the server.
    pub fn frame(&mut self) -> Value {
        match next_data(&mut self.ws) {
            Message::Text(t) => serde_json::from_str(&t).expect("server sent JSON"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Sends `cmd` with the next id, without waiting; returns the id.
    pub fn send_cmd(&mut self, mut cmd: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        cmd["id"] = json!(id);
        self.ws.send(Message::text(cmd.to_string())).expect("send");
        id
    }

    /// Reads until the reply to `id`, keeping pushes that come first.
    pub fn reply(&mut self, id: u64) -> Value {
        loop {
            let f = self.frame();
            if f.get("push").is_some() {
                self.pushes.push_back(f);
            } else if f["id"] == json!(id) {
                return f;
            } else {
                panic!("unexpected frame while waiting for reply {id}: {f}");
            }
        }
    }

    /// Sends `cmd` and returns its reply.
    pub fn cmd(&mut self, cmd: Value) -> Value {
        let id = self.send_cmd(cmd);
        self.reply(id)
    }

    /// Sends `cmd` and returns its `ok` body; panics on an error reply.
    pub fn ok(&mut self, cmd: Value) -> Value {
        let r = self.cmd(cmd.clone());
        match r.get("ok") {
            Some(ok) => ok.clone(),
            None => panic!("{cmd} failed: {r}"),
        }
    }

    /// Sends `cmd` and returns its error code; panics on success.
    pub fn err_code(&mut self, cmd: Value) -> u64 {
        let r = self.cmd(cmd.clone());
        r["err"]["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("{cmd} did not fail: {r}"))
    }

    /// The next push.
    pub fn push(&mut self) -> Value {
        if let Some(p) = self.pushes.pop_front() {
            return p;
        }
        let f = self.frame();
        assert!(f.get("push").is_some(), "expected a push, got {f}");
        f
    }

    /// Reads until the server's Close and returns its code (data frames are skipped).
    pub fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.ws.read() {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(e) => panic!("no Close from the server: {e}"),
            }
        }
    }

    /// Cuts the TCP connection without a Close frame.
    pub fn cut(self) {
        if let MaybeTlsStream::Plain(s) = self.ws.get_ref() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}
