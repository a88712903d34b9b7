//! The hub pattern, teaching version: std threads, crossbeam channels and tungstenite only.
//! Go runs a read pump and a write pump goroutine per client and one hub goroutine that
//! owns the client map; here they are OS threads.
//!
//! - The **hub thread** owns the member map. It never blocks on a client: a broadcast is
//!   encoded once and `try_send` to each member's bounded queue; a full queue is a slow
//!   consumer, cut at once.
//! - A **reader thread** per client owns its `WebSocket`, which writes into the writer's
//!   queue (`Split`): tungstenite's Pong and Close replies and the broadcasts share one
//!   queue, so frames never interleave. A **writer thread** makes every socket write.
//!
//! Demo: alice and bob read everything; carol stops reading and is cut, and alice and bob
//! still get every tick. `cargo run --example hub`; wshub's hub is `src/server/hub.rs`.

use crossbeam_channel::{Receiver, Sender, bounded};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;
use tungstenite::protocol::frame::{Frame, coding::Data, coding::OpCode};
use tungstenite::{Bytes, Message};

const QUEUE: usize = 64; // frames queued per client before it counts as a slow consumer
const MESSAGES: usize = 500;

enum HubMsg {
    Join(u64, Sender<Bytes>, TcpStream),
    Leave(u64),
    Broadcast(Message),
}

/// The hub: the one owner of the members. Ends when every sender of its inbox is gone.
fn hub(inbox: Receiver<HubMsg>) {
    let mut members: HashMap<u64, (Sender<Bytes>, TcpStream)> = HashMap::new();
    for msg in inbox {
        match msg {
            HubMsg::Join(id, queue, sock) => drop(members.insert(id, (queue, sock))),
            HubMsg::Leave(id) => drop(members.remove(&id)),
            HubMsg::Broadcast(msg) => {
                let mut frame = Vec::new(); // encoded once for every member
                let data = Frame::message(msg.into_data(), OpCode::Data(Data::Text), true);
                data.format(&mut frame).expect("a Vec takes any frame");
                let frame = Bytes::from(frame);
                members.retain(|id, (queue, sock)| match queue.try_send(frame.clone()) {
                    Ok(()) => true,
                    Err(e) if e.is_full() => {
                        println!("hub: connection {id} is a slow consumer: cut");
                        let _ = sock.shutdown(Shutdown::Both); // wakes its reader and writer
                        false
                    }
                    Err(_) => false, // its writer is gone
                });
            }
        }
    }
}

/// The reader's stream: reads from the socket, writes into the writer's queue.
struct Split(TcpStream, Sender<Bytes>);
impl Read for Split {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}
impl Write for Split {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Bounded: a writer whose write times out drops the queue, and this fails.
        let gone = |_| io::Error::from(io::ErrorKind::BrokenPipe);
        self.1.send(Bytes::copy_from_slice(buf)).map_err(gone)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(()) // each write is already queued whole
    }
}

/// One client's reader thread: handshake, register, read until the connection ends.
fn reader(id: u64, sock: TcpStream, hub: Sender<HubMsg>) {
    let (queue, frames) = bounded::<Bytes>(QUEUE);
    let mut out = sock.try_clone().unwrap();
    out.set_write_timeout(Some(Duration::from_secs(5))).unwrap(); // every write has an exit
    let writer = thread::spawn(move || {
        for bytes in frames {
            if out.write_all(&bytes).is_err() {
                let _ = out.shutdown(Shutdown::Both); // a failed write ends the reader too
                return;
            }
        }
    });
    {
        if let Ok(mut ws) = tungstenite::accept(Split(sock.try_clone().unwrap(), queue.clone())) {
            let _ = hub.send(HubMsg::Join(id, queue, sock));
            while let Ok(msg) = ws.read() {
                if msg.is_text() {
                    let _ = hub.send(HubMsg::Broadcast(msg));
                }
            }
            let _ = hub.send(HubMsg::Leave(id));
        }
    } // our senders of the queue are dropped here; the hub drops its own on Leave
    writer.join().expect("writer thread"); // so no thread outlives the connection
}

fn main() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let (hub_tx, inbox) = bounded(1024);
    thread::spawn(move || hub(inbox));
    let accept_hub = hub_tx.clone();
    // Accepts until the process exits (examples/drain.rs shows a server that stops).
    thread::spawn(move || {
        for (id, sock) in (1..).zip(listener.incoming().flatten()) {
            let hub = accept_hub.clone();
            thread::spawn(move || reader(id, sock, hub));
        }
    });

    // Each client says hello and waits for its own hello: from then on it is a member.
    let join = |name: &str| {
        let (mut ws, _) = tungstenite::connect(url.as_str()).expect("connect");
        ws.send(Message::text(format!("{name} joined"))).unwrap();
        while ws.read().unwrap() != Message::text(format!("{name} joined")) {}
        ws
    };
    let mut counters = Vec::new();
    for name in ["alice", "bob"] {
        let mut ws = join(name);
        counters.push(thread::spawn(move || {
            let mut seen = 0;
            while let Ok(Message::Text(text)) = ws.read() {
                match text.as_str() {
                    "done" => break,
                    text if text.starts_with("tick") => seen += 1,
                    _ => {}
                }
            }
            println!("{name} received {seen} of {MESSAGES} ticks");
        }));
    }
    let _carol = join("carol"); // carol never reads again
    let tick = "x".repeat(64 * 1024);
    for n in 0..MESSAGES {
        let _ = hub_tx.send(HubMsg::Broadcast(Message::text(format!("tick {n} {tick}"))));
        thread::sleep(Duration::from_millis(2)); // a steady producer, not a burst
    }
    hub_tx.send(HubMsg::Broadcast(Message::text("done"))).unwrap();
    counters.into_iter().for_each(|c| c.join().unwrap());
}
