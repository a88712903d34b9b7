//! The protocol thread: owns the [`State`], carries out its actions.
//!
//! It **wakes** on the session's events, on a call from the handle, on the earliest
//! call deadline, and on `closing` disconnecting; every wait, the delivery of an event
//! included, is in a `select!` with `closing`, so [`ChannelClient::close`] ends it at
//! once. It **ends** on close or when the session's events end (stopped, or gave up),
//! answering every waiting caller with [`ChannelError::Closed`].
//!
//! [`ChannelClient::close`]: super::ChannelClient::close

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, at, never, select};
use log::warn;
use tungstenite::Message;

use super::state::{Action, Answered, State};
use super::{ChannelError, ChannelEvent};
use crate::client::{ClientError, Event, ReconnectingClient};
use crate::pubsub::protocol::{Command, StreamPosition};

/// Where the protocol thread answers a caller: `None` for subscribe and unsubscribe.
pub(super) type Answer = Sender<Result<Option<Answered>, ChannelError>>;

/// A call from the handle.
pub(super) enum Call {
    Subscribe {
        ch: String,
        since: Option<StreamPosition>,
        answer: Answer,
    },
    Unsubscribe {
        ch: String,
        answer: Answer,
    },
    /// A `pub` or `history`, answered by its reply or at its deadline.
    Request {
        command: Command,
        deadline: Instant,
        answer: Answer,
    },
}

pub(super) struct Protocol {
    session: Arc<ReconnectingClient>,
    calls: Receiver<Call>,
    events: Sender<ChannelEvent>,
    closing: Receiver<()>,
    state: State<Answer>,
    ending: bool,
}

impl Protocol {
    pub fn new(
        session: Arc<ReconnectingClient>,
        calls: Receiver<Call>,
        events: Sender<ChannelEvent>,
        closing: Receiver<()>,
        state: State<Answer>,
    ) -> Protocol {
        Protocol {
            session,
            calls,
            events,
            closing,
            state,
            ending: false,
        }
    }

    pub fn run(mut self) {
        let session = self.session.clone();
        while !self.ending {
            let timer = self.state.next_deadline().map(at).unwrap_or_else(never);
            select! {
                recv(session.events()) -> event => match event {
                    Ok(event) => self.on_event(event),
                    Err(_) => break, // the session has ended
                },
                recv(self.calls) -> call => match call {
                    Ok(call) => self.on_call(call),
                    Err(_) => break,
                },
                recv(self.closing) -> _ => break,
                recv(timer) -> _ => {
                    let actions = self.state.expire(Instant::now());
                    self.act(actions);
                }
            }
        }
        let actions = self.state.close();
        self.act(actions);
        // `events` drops here: the application's event channel disconnects.
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected => {
                self.emit(ChannelEvent::Connection(Event::Connected));
                let actions = self.state.connected();
                self.act(actions);
            }
            Event::Message(Message::Text(text)) => {
                let actions = self.state.on_text(text.as_str());
                self.act(actions);
            }
            Event::Message(other) => warn!("ignoring a non-text message on /ws: {other:?}"),
            event @ Event::Disconnected { .. } => {
                self.state.disconnected();
                self.emit(ChannelEvent::Connection(event));
            }
            event => self.emit(ChannelEvent::Connection(event)),
        }
    }

    fn on_call(&mut self, call: Call) {
        let (result, answer) = match call {
            Call::Subscribe { ch, since, answer } => (self.state.subscribe(ch, since), answer),
            Call::Unsubscribe { ch, answer } => (self.state.unsubscribe(&ch), answer),
            Call::Request {
                command,
                deadline,
                answer,
            } => match self.state.call(command, deadline, answer.clone()) {
                Ok(actions) => {
                    self.act(actions);
                    return; // answered later
                }
                Err(e) => (Err(e), answer),
            },
        };
        match result {
            Ok(actions) => {
                let _ = answer.send(Ok(None));
                self.act(actions);
            }
            Err(e) => {
                let _ = answer.send(Err(e));
            }
        }
    }

    fn act(&mut self, actions: Vec<Action<Answer>>) {
        for action in actions {
            match action {
                Action::Send(text) => match self.session.send(Message::text(text)) {
                    // The connection is going: its Disconnected will follow, and the
                    // state sends again on the next connection.
                    Ok(()) | Err(ClientError::NotConnected) => {}
                    Err(e) => warn!("cannot send a command: {e}"),
                },
                Action::Emit(event) => self.emit(event),
                Action::Answer(answer, result) => {
                    // The caller may have stopped waiting (its own deadline): fine.
                    let _ = answer.try_send(result.map(Some));
                }
            }
        }
    }

    /// Delivers an event, waiting while the application's queue is full, unless the
    /// client is closing (then it is dropped).
    fn emit(&mut self, event: ChannelEvent) {
        if self.ending {
            return;
        }
        select! {
            send(self.events, event) -> _ => {} // a dropped receiver is fine too
            recv(self.closing) -> _ => self.ending = true,
        }
    }
}
