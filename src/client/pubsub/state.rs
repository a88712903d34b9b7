//! The protocol client's state, free of I/O: subscriptions and the position each has
//! delivered, commands waiting for their reply, and the rules that turn server frames
//! into events.
//!
//! **Owns** nothing shared: one [`State`] belongs to the protocol thread, which feeds it
//! what happens (a call of the handle, a connection opened or lost, a text frame, the
//! time) and carries out the [`Action`]s it returns (send a frame, deliver an event,
//! answer a caller). The caller's answer channel is the type parameter `T`, so the
//! unit tests below run every rule without a thread or a socket.
//!
//! The rules:
//! - **Exactly once, in order.** Each subscription remembers the position it has
//!   delivered up to (epoch and offset). A publication at or below it is a duplicate and
//!   is dropped; a push that arrives before its subscription's reply waits for it.
//! - **Resume.** After a reconnect every subscription is sent again with `since` = that
//!   position; `recovered: true` delivers the missed publications, `recovered: false`
//!   starts again from the server's top (and the event tells the application to reload).
//! - **Publish at least once, applied once.** A `pub` keeps its idempotency key until
//!   its reply; if the connection is lost first, it is sent again with the same key on
//!   the next connection, so the server applies it once. A `pub` or `history` made while
//!   disconnected waits for the next connection. Each has a deadline, after which its
//!   caller is answered [`ChannelError::Timeout`].
//! - **Hello first.** With an identity configured, every connection starts with `hello`
//!   (before the subscriptions are sent again), so the server knows who resubscribes.
//!   Its answer is an event ([`ChannelEvent::Welcome`] or [`ChannelEvent::HelloRefused`]).
//! - **Joins and leaves** of subscribed channels are events in the order the server
//!   sent them, between the publications of the same channel.
//! - **A temporary refusal is retried.** A `sub` answered with error 6 (unavailable: the
//!   server's engine, Redis, is down) keeps its subscription and its position and is
//!   sent again after a backoff delay (with jitter, growing per failure, reset by a
//!   success), until it succeeds or the application unsubscribes; each refusal is a
//!   [`ChannelEvent::SubscribeRetrying`]. Any other refusal ends the subscription.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use crate::client::backoff::{Backoff, BackoffConfig};

use log::warn;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{ChannelError, ChannelEvent};
use crate::pubsub::protocol::{
    Command, ErrorCode, Outcome, PresenceList, Publication, Push, Reply, Request, ServerFrame, Snapshot,
    StreamPosition, Welcome,
};

/// Pushes kept for a subscription whose `sub` reply has not arrived yet.
const EARLY_LIMIT: usize = 1024;

/// What the protocol thread must do, in this order.
#[derive(Debug)]
pub(crate) enum Action<T> {
    /// Send this text frame on the open connection.
    Send(String),
    /// Deliver this event to the application.
    Emit(ChannelEvent),
    /// Answer a caller waiting in `publish` or `history`.
    Answer(T, Result<Answered, ChannelError>),
}

/// A successful answer to a blocking call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answered {
    /// A `pub`'s ack: where the publication is.
    Published(StreamPosition),
    /// A `history` reply.
    History(Snapshot),
    /// A `presence` reply.
    Presence(PresenceList),
}

/// A subscription the application asked for.
#[derive(Debug)]
struct Sub {
    /// The position delivered up to; `None` until the first reply.
    position: Option<StreamPosition>,
    /// The id of the `sub` in flight on this connection, if any.
    pending: Option<u64>,
    /// Pushes that arrived before the `sub`'s reply.
    early: VecDeque<Publication>,
    /// After an error 6: when to send the `sub` again.
    retry_at: Option<Instant>,
    /// The retry delays since the last success (made at the first error 6).
    backoff: Option<Backoff>,
}

impl Sub {
    fn new(position: Option<StreamPosition>) -> Sub {
        Sub {
            position,
            pending: None,
            early: VecDeque::new(),
            retry_at: None,
            backoff: None,
        }
    }
}

/// A `pub` or `history` waiting for its reply (or for a connection).
#[derive(Debug)]
struct Call<T> {
    command: Command,
    deadline: Instant,
    answer: T,
}

/// What a command id in flight was.
#[derive(Debug)]
enum InFlight {
    /// A `sub` for this channel.
    Sub(String),
    /// An `unsub`: its reply only confirms.
    Unsub,
    /// The connection's `hello`.
    Hello,
    /// A `pub` or `history`: the key into `calls`.
    Call(u64),
}

/// The protocol client's state (see the module docs).
#[derive(Debug)]
pub(crate) struct State<T> {
    connected: bool,
    next_id: u64,
    subs: BTreeMap<String, Sub>,
    in_flight: HashMap<u64, InFlight>,
    /// Calls by a number of their own that survives reconnects (command ids do not).
    calls: BTreeMap<u64, Call<T>>,
    next_call: u64,
    /// Sent first on every connection, when set.
    hello: Option<Command>,
    /// Every `sub` asks for joins and leaves.
    joins: bool,
    /// How a `sub` refused with error 6 is retried.
    retry: BackoffConfig,
}

impl<T> Default for State<T> {
    fn default() -> Self {
        State {
            hello: None,
            joins: false,
            retry: BackoffConfig::default(),
            connected: false,
            next_id: 1,
            subs: BTreeMap::new(),
            in_flight: HashMap::new(),
            calls: BTreeMap::new(),
            next_call: 0,
        }
    }
}

impl<T> State<T> {
    /// A state that says `hello` (a [`Command::Hello`]) first on every connection, and
    /// asks every subscription for joins and leaves when `joins`.
    pub fn with_identity(hello: Option<Command>, joins: bool) -> State<T> {
        State {
            hello,
            joins,
            ..State::default()
        }
    }

    /// Retries a `sub` refused with error 6 after delays from `retry`.
    pub fn with_retry(mut self, retry: BackoffConfig) -> State<T> {
        self.retry = retry;
        self
    }

    /// Subscribes to `ch`, resuming after `since` if given (a position the application
    /// kept): sent now if connected, else on the next connection.
    pub fn subscribe(
        &mut self,
        ch: String,
        since: Option<StreamPosition>,
    ) -> Result<Vec<Action<T>>, ChannelError> {
        check_channel(&ch)?;
        if self.subs.contains_key(&ch) {
            return Err(ChannelError::AlreadySubscribed(ch));
        }
        self.subs.insert(ch.clone(), Sub::new(since));
        let mut out = Vec::new();
        if self.connected {
            self.send_sub(&ch, &mut out);
        }
        Ok(out)
    }

    /// Ends the subscription to `ch`: nothing more is delivered for it.
    pub fn unsubscribe(&mut self, ch: &str) -> Result<Vec<Action<T>>, ChannelError> {
        if self.subs.remove(ch).is_none() {
            return Err(ChannelError::NotSubscribed(ch.to_owned()));
        }
        let mut out = Vec::new();
        if self.connected {
            let id = self.take_id();
            self.in_flight.insert(id, InFlight::Unsub);
            out.push(send(id, Command::Unsub { ch: ch.to_owned() }));
        }
        Ok(out)
    }

    /// A `pub` or `history` call, answered through `answer` by its reply or at
    /// `deadline`. A `pub` must carry its key.
    pub fn call(
        &mut self,
        command: Command,
        deadline: Instant,
        answer: T,
    ) -> Result<Vec<Action<T>>, ChannelError> {
        if let Some(ch) = command.channel() {
            check_channel(ch)?;
        }
        let number = self.next_call;
        self.next_call += 1;
        self.calls.insert(
            number,
            Call {
                command,
                deadline,
                answer,
            },
        );
        let mut out = Vec::new();
        if self.connected {
            self.send_call(number, &mut out);
        }
        Ok(out)
    }

    /// A connection is open: subscribe again (with `since` where a position is known)
    /// and send every call still waiting, `pub`s with their original keys.
    pub fn connected(&mut self) -> Vec<Action<T>> {
        self.connected = true;
        let mut out = Vec::new();
        if let Some(hello) = self.hello.clone() {
            let id = self.take_id();
            self.in_flight.insert(id, InFlight::Hello);
            out.push(send(id, hello));
        }
        let channels: Vec<String> = self.subs.keys().cloned().collect();
        for ch in channels {
            self.send_sub(&ch, &mut out);
        }
        let numbers: Vec<u64> = self.calls.keys().copied().collect();
        for number in numbers {
            self.send_call(number, &mut out);
        }
        out
    }

    /// The connection is gone: whatever was in flight will be sent again.
    pub fn disconnected(&mut self) {
        self.connected = false;
        self.in_flight.clear();
        for sub in self.subs.values_mut() {
            sub.pending = None;
            sub.early.clear();
        }
    }

    /// Answers every call whose deadline has passed with a timeout, and sends again
    /// every `sub` whose retry is due (if connected: a connection sends them all).
    pub fn expire(&mut self, now: Instant) -> Vec<Action<T>> {
        let retry: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, s)| s.retry_at.is_some_and(|at| at <= now))
            .map(|(ch, _)| ch.clone())
            .collect();
        let mut out = Vec::new();
        for ch in retry {
            if let Some(sub) = self.subs.get_mut(&ch) {
                sub.retry_at = None;
            }
            if self.connected {
                self.send_sub(&ch, &mut out);
            }
        }
        out.extend(self.expire_calls(now));
        out
    }

    fn expire_calls(&mut self, now: Instant) -> Vec<Action<T>> {
        let due: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(n, _)| *n)
            .collect();
        let mut out = Vec::new();
        for number in due {
            if let Some(call) = self.calls.remove(&number) {
                out.push(Action::Answer(call.answer, Err(ChannelError::Timeout)));
            }
        }
        // Their replies, if any come, are ignored.
        self.in_flight
            .retain(|_, f| !matches!(f, InFlight::Call(n) if !self.calls.contains_key(n)));
        out
    }

    /// The earliest deadline of a waiting call or a `sub` retry.
    pub fn next_deadline(&self) -> Option<Instant> {
        let calls = self.calls.values().map(|c| c.deadline);
        let retries = self.subs.values().filter_map(|s| s.retry_at);
        calls.chain(retries).min()
    }

    /// Ends everything: every waiting caller is answered [`ChannelError::Closed`].
    pub fn close(&mut self) -> Vec<Action<T>> {
        self.disconnected();
        std::mem::take(&mut self.calls)
            .into_values()
            .map(|c| Action::Answer(c.answer, Err(ChannelError::Closed)))
            .collect()
    }

    /// A text frame from the server.
    pub fn on_text(&mut self, text: &str) -> Vec<Action<T>> {
        self.on_text_at(text, Instant::now())
    }

    /// A text frame from the server, received at `now`.
    pub fn on_text_at(&mut self, text: &str, now: Instant) -> Vec<Action<T>> {
        let mut out = Vec::new();
        match serde_json::from_str::<ServerFrame>(text) {
            Ok(ServerFrame::Push(Push::Pub(p))) => self.on_publication(p, &mut out),
            Ok(ServerFrame::Push(Push::Unsub { ch, code, reason })) => {
                self.on_unsub_push(ch, code, reason, &mut out)
            }
            Ok(ServerFrame::Reply(reply)) => self.on_reply(reply, now, &mut out),
            Ok(ServerFrame::Push(Push::Join(m))) => self.on_member(m, true, &mut out),
            Ok(ServerFrame::Push(Push::Leave(m))) => self.on_member(m, false, &mut out),
            // A push of a kind this version does not know is ignored, as the protocol
            // asks; anything else unreadable is worth a warning.
            Err(e) if is_push(text) => log::debug!("ignoring an unknown push ({e}): {}", cut(text)),
            Err(e) => warn!(
                "ignoring a frame this client does not understand ({e}): {}",
                cut(text)
            ),
        }
        out
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        // Ids only need to be unique among the commands in flight; 2^53 is far off.
        self.next_id = if id >= crate::pubsub::protocol::MAX_ID {
            1
        } else {
            id + 1
        };
        id
    }

    fn send_sub(&mut self, ch: &str, out: &mut Vec<Action<T>>) {
        let id = self.take_id();
        let Some(sub) = self.subs.get_mut(ch) else { return };
        sub.pending = Some(id);
        sub.retry_at = None;
        sub.early.clear();
        self.in_flight.insert(id, InFlight::Sub(ch.to_owned()));
        out.push(send(
            id,
            Command::Sub {
                ch: ch.to_owned(),
                since: sub.position.clone(),
                joins: self.joins,
            },
        ));
    }

    fn send_call(&mut self, number: u64, out: &mut Vec<Action<T>>) {
        let id = self.take_id();
        let Some(call) = self.calls.get(&number) else {
            return;
        };
        self.in_flight.insert(id, InFlight::Call(number));
        out.push(send(id, call.command.clone()));
    }

    fn on_reply(&mut self, reply: Reply<Value>, now: Instant, out: &mut Vec<Action<T>>) {
        let Some(id) = reply.id else {
            if let Outcome::Err(e) = reply.outcome {
                warn!(
                    "the server could not read a command: {} ({})",
                    e.msg,
                    u16::from(e.code)
                );
            }
            return;
        };
        match self.in_flight.remove(&id) {
            None => log::debug!("ignoring a reply to command {id}, which is no longer waiting"),
            Some(InFlight::Unsub) => {}
            Some(InFlight::Hello) => out.push(Action::Emit(match reply.outcome {
                Outcome::Ok(v) => match decode::<Welcome>(v) {
                    Ok(w) => ChannelEvent::Welcome {
                        client: w.client,
                        user: w.user,
                    },
                    Err(e) => ChannelEvent::HelloRefused(e),
                },
                Outcome::Err(e) => ChannelEvent::HelloRefused(ChannelError::Server(e)),
            })),
            Some(InFlight::Sub(ch)) => self.on_sub_reply(ch, id, reply.outcome, now, out),
            Some(InFlight::Call(number)) => {
                let Some(call) = self.calls.remove(&number) else {
                    return;
                };
                let result = match (&call.command, reply.outcome) {
                    (_, Outcome::Err(e)) => Err(ChannelError::Server(e)),
                    (Command::Pub { .. }, Outcome::Ok(v)) => decode(v).map(Answered::Published),
                    (Command::Presence { .. }, Outcome::Ok(v)) => decode(v).map(Answered::Presence),
                    (_, Outcome::Ok(v)) => decode(v).map(Answered::History),
                };
                out.push(Action::Answer(call.answer, result));
            }
        }
    }

    fn on_sub_reply(
        &mut self,
        ch: String,
        id: u64,
        outcome: Outcome<Value>,
        now: Instant,
        out: &mut Vec<Action<T>>,
    ) {
        let retry = self.retry;
        let Some(sub) = self.subs.get_mut(&ch) else { return };
        if sub.pending != Some(id) {
            return; // an older attempt's reply
        }
        sub.pending = None;
        let snapshot: Snapshot = match outcome.map_ok(decode) {
            Ok(Ok(s)) => s,
            Err(e) if !e.is_fatal() => {
                // Temporary (error 6): keep the subscription and its position; try again.
                let retry_in = sub
                    .backoff
                    .get_or_insert_with(|| Backoff::new(retry))
                    .next_delay();
                sub.retry_at = Some(now + retry_in);
                out.push(Action::Emit(ChannelEvent::SubscribeRetrying {
                    ch,
                    error: e,
                    retry_in,
                }));
                return;
            }
            Ok(Err(e)) | Err(e) => {
                self.subs.remove(&ch);
                out.push(Action::Emit(ChannelEvent::SubscribeFailed { ch, error: e }));
                return;
            }
        };
        sub.backoff = None;
        let asked = sub.position.clone();
        let recovered = snapshot.recovered;
        let top = StreamPosition {
            epoch: snapshot.epoch,
            offset: snapshot.offset,
        };
        // Recovered: deliver from where we were. Otherwise (a first subscription, or not
        // recoverable): start at the server's top.
        let resumes = recovered == Some(true) && asked.as_ref().is_some_and(|p| p.epoch == top.epoch);
        sub.position = Some(match asked {
            Some(p) if resumes => p,
            _ => top.clone(),
        });
        out.push(Action::Emit(ChannelEvent::Subscribed {
            ch: ch.clone(),
            position: top,
            recovered: recovered.map(|_| resumes),
        }));
        if resumes {
            for p in snapshot.pubs {
                self.deliver(p, out);
            }
        }
        let early = self.subs.get_mut(&ch).map(|s| std::mem::take(&mut s.early));
        for p in early.into_iter().flatten() {
            self.deliver(p, out);
        }
    }

    /// A join or leave of a subscribed channel, delivered as it comes: the server sends
    /// them after the `sub` reply, in order with the publications.
    fn on_member(&mut self, m: crate::pubsub::protocol::Member, join: bool, out: &mut Vec<Action<T>>) {
        let Some(ch) = m.ch.clone() else { return };
        if !self.subs.contains_key(&ch) {
            return;
        }
        out.push(Action::Emit(if join {
            ChannelEvent::Join(m)
        } else {
            ChannelEvent::Leave(m)
        }));
    }

    fn on_publication(&mut self, p: Publication, out: &mut Vec<Action<T>>) {
        match self.subs.get_mut(&p.ch) {
            None => {} // unsubscribed, or a late push after an unsub
            Some(sub) if sub.pending.is_some() => {
                // The server replies to a `sub` before any push that follows it, so
                // this holds at most a few; a server that breaks that rule is not
                // allowed to grow it without bound.
                if sub.early.len() < EARLY_LIMIT {
                    sub.early.push_back(p);
                } else {
                    warn!(
                        "{}: pushes before the sub reply past {EARLY_LIMIT}: dropped",
                        p.ch
                    );
                }
            }
            Some(_) => self.deliver(p, out),
        }
    }

    /// Delivers `p` unless its subscription has already delivered its offset.
    fn deliver(&mut self, p: Publication, out: &mut Vec<Action<T>>) {
        let Some(sub) = self.subs.get_mut(&p.ch) else {
            return;
        };
        let Some(position) = sub.position.as_mut() else {
            return;
        };
        if p.offset <= position.offset {
            return; // already delivered
        }
        if p.offset != position.offset + 1 {
            warn!(
                "{}: offset {} follows {}: the server skipped publications",
                p.ch, p.offset, position.offset
            );
        }
        position.offset = p.offset;
        out.push(Action::Emit(ChannelEvent::Publication {
            epoch: position.epoch.clone(),
            publication: p,
        }));
    }

    fn on_unsub_push(&mut self, ch: String, code: ErrorCode, reason: String, out: &mut Vec<Action<T>>) {
        if !self.subs.contains_key(&ch) {
            return;
        }
        if code == ErrorCode::Unavailable {
            // Temporary: subscribe again from where we are.
            self.send_sub(&ch, out);
            return;
        }
        self.subs.remove(&ch);
        out.push(Action::Emit(ChannelEvent::Unsubscribed { ch, code, reason }));
    }
}

trait MapOk<T> {
    fn map_ok<U>(self, f: impl FnOnce(T) -> U) -> Result<U, ChannelError>;
}

impl<T> MapOk<T> for Outcome<T> {
    fn map_ok<U>(self, f: impl FnOnce(T) -> U) -> Result<U, ChannelError> {
        match self {
            Outcome::Ok(v) => Ok(f(v)),
            Outcome::Err(e) => Err(ChannelError::Server(e)),
        }
    }
}

fn decode<R: DeserializeOwned>(v: Value) -> Result<R, ChannelError> {
    serde_json::from_value(v).map_err(|e| ChannelError::BadReply(e.to_string()))
}

fn send<T>(id: u64, command: Command) -> Action<T> {
    // A Request of owned strings and JSON values always serialises.
    Action::Send(serde_json::to_string(&Request { id, command }).unwrap_or_default())
}

fn check_channel(ch: &str) -> Result<(), ChannelError> {
    crate::pubsub::protocol::validate_channel(ch).map_err(|reason| ChannelError::InvalidChannel {
        ch: ch.to_owned(),
        reason,
    })
}

/// True for a JSON object with a `"push"` field.
fn is_push(text: &str) -> bool {
    serde_json::from_str::<serde_json::Map<String, Value>>(text).is_ok_and(|m| m.contains_key("push"))
}

/// The start of a frame, for a log line.
fn cut(text: &str) -> &str {
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    type Test = State<&'static str>;

    /// The frames among `actions`, as JSON.
    fn sent(actions: &[Action<&'static str>]) -> Vec<Value> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(text) => Some(serde_json::from_str(text).unwrap()),
                _ => None,
            })
            .collect()
    }

    /// The offsets of the publications among `actions`.
    fn delivered(actions: &[Action<&'static str>]) -> Vec<u64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Emit(ChannelEvent::Publication { publication, .. }) => Some(publication.offset),
                _ => None,
            })
            .collect()
    }

    fn subscribed(actions: &[Action<&'static str>]) -> Option<(StreamPosition, Option<bool>)> {
        actions.iter().find_map(|a| match a {
            Action::Emit(ChannelEvent::Subscribed {
                position, recovered, ..
            }) => Some((position.clone(), *recovered)),
            _ => None,
        })
    }

    fn push(ch: &str, offset: u64) -> String {
        json!({"push":"pub","ch":ch,"offset":offset,"data":offset}).to_string()
    }

    fn sub_reply(id: &Value, epoch: &str, top: u64, pubs: &[u64], recovered: Option<bool>) -> String {
        let pubs: Vec<Value> = pubs
            .iter()
            .map(|o| json!({"ch":"a","offset":o,"data":o}))
            .collect();
        let mut ok = json!({"epoch":epoch,"offset":top,"pubs":pubs});
        if let Some(r) = recovered {
            ok["recovered"] = json!(r);
        }
        json!({"id":id,"ok":ok}).to_string()
    }

    /// A state connected and subscribed to "a" at epoch "e1", top `top`.
    fn subscribed_at(top: u64) -> Test {
        let mut s = Test::default();
        s.connected();
        let out = s.subscribe("a".into(), None).unwrap();
        let sub = &sent(&out)[0];
        s.on_text(&sub_reply(&sub["id"], "e1", top, &[], None));
        s
    }

    /// A `pub` of `data` to "a" under `key`.
    fn keyed_pub(data: Value, key: &str) -> Command {
        Command::Pub {
            ch: "a".into(),
            data,
            key: Some(key.into()),
        }
    }

    /// Drops the connection and makes a new one: the frames the state sends on it.
    fn reconnect(s: &mut Test) -> Vec<Value> {
        s.disconnected();
        sent(&s.connected())
    }

    fn later(d: u64) -> Instant {
        Instant::now() + Duration::from_secs(d)
    }

    #[test]
    fn a_first_subscription_starts_at_the_servers_top() {
        let mut s = Test::default();
        s.connected();
        let out = s.subscribe("a".into(), None).unwrap();
        let frames = sent(&out);
        assert_eq!(frames[0]["op"], "sub");
        assert_eq!(frames[0]["ch"], "a");
        assert!(frames[0].get("since").is_none());
        let out = s.on_text(&sub_reply(&frames[0]["id"], "e1", 5, &[], None));
        let (position, recovered) = subscribed(&out).unwrap();
        assert_eq!(
            (position.epoch.as_str(), position.offset, recovered),
            ("e1", 5, None)
        );
        assert_eq!(delivered(&s.on_text(&push("a", 6))), [6]);
        assert_eq!(delivered(&s.on_text(&push("a", 7))), [7]);
    }

    #[test]
    fn an_offset_already_delivered_is_not_delivered_again() {
        let mut s = subscribed_at(0);
        assert_eq!(delivered(&s.on_text(&push("a", 1))), [1]);
        assert!(delivered(&s.on_text(&push("a", 1))).is_empty());
        assert!(delivered(&s.on_text(&push("a", 0))).is_empty());
        assert_eq!(delivered(&s.on_text(&push("a", 2))), [2]);
    }

    #[test]
    fn a_subscription_made_offline_is_sent_on_connect() {
        let mut s = Test::default();
        assert!(s.subscribe("a".into(), None).unwrap().is_empty());
        let frames = sent(&s.connected());
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0]["op"], "sub");
    }

    #[test]
    fn pushes_before_the_sub_reply_wait_for_it_and_are_not_repeated() {
        let mut s = Test::default();
        s.connected();
        let frames = sent(&s.subscribe("a".into(), None).unwrap());
        assert!(delivered(&s.on_text(&push("a", 6))).is_empty());
        assert!(delivered(&s.on_text(&push("a", 7))).is_empty());
        let out = s.on_text(&sub_reply(&frames[0]["id"], "e1", 6, &[], None));
        assert!(subscribed(&out).is_some());
        assert_eq!(delivered(&out), [7]);
    }

    #[test]
    fn recovered_true_in_another_epoch_is_taken_as_not_recovered() {
        let mut s = subscribed_at(3);
        let frames = reconnect(&mut s);
        let out = s.on_text(&sub_reply(&frames[0]["id"], "e9", 5, &[4, 5], Some(true)));
        assert_eq!(subscribed(&out).unwrap().1, Some(false));
        assert!(delivered(&out).is_empty());
        assert_eq!(delivered(&s.on_text(&push("a", 6))), [6]);
    }

    #[test]
    fn a_reconnect_resubscribes_with_since_the_last_delivered_position() {
        let mut s = subscribed_at(3);
        s.on_text(&push("a", 4));
        let frames = reconnect(&mut s);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0]["since"], json!({"epoch":"e1","offset":4}));
    }

    #[test]
    fn recovered_publications_are_delivered_once_each_in_order() {
        let mut s = subscribed_at(3);
        s.on_text(&push("a", 4));
        let frames = reconnect(&mut s);
        // A live push overtakes the reply; the reply repeats nothing already seen.
        s.on_text(&push("a", 8));
        let out = s.on_text(&sub_reply(&frames[0]["id"], "e1", 7, &[5, 6, 7], Some(true)));
        assert_eq!(subscribed(&out).unwrap().1, Some(true));
        assert_eq!(delivered(&out), [5, 6, 7, 8]);
        assert!(delivered(&s.on_text(&push("a", 8))).is_empty());
        assert_eq!(delivered(&s.on_text(&push("a", 9))), [9]);
    }

    #[test]
    fn recovered_false_is_reported_and_delivery_restarts_from_the_new_top() {
        let mut s = subscribed_at(40);
        let frames = reconnect(&mut s);
        let out = s.on_text(&sub_reply(&frames[0]["id"], "e2", 2, &[], Some(false)));
        let (position, recovered) = subscribed(&out).unwrap();
        assert_eq!((position.epoch.as_str(), recovered), ("e2", Some(false)));
        // Offsets of the new epoch are new, though lower than those seen before.
        let out = s.on_text(&push("a", 3));
        assert_eq!(delivered(&out), [3]);
        assert!(matches!(&out[0], Action::Emit(ChannelEvent::Publication { epoch, .. }) if epoch == "e2"));
        assert_eq!(reconnect(&mut s)[0]["since"], json!({"epoch":"e2","offset":3}));
    }

    #[test]
    fn a_publish_lost_with_its_connection_is_sent_again_with_the_same_key() {
        let mut s = Test::default();
        s.connected();
        let cmd = keyed_pub(json!("x"), "k1");
        let first = sent(&s.call(cmd, later(10), "caller").unwrap());
        assert_eq!(first[0]["key"], "k1");
        let again = reconnect(&mut s);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0]["key"], "k1");
        assert_eq!(again[0]["data"], "x");
        assert_ne!(again[0]["id"], first[0]["id"]);
        // The first connection's reply, were it to arrive late, answers nothing.
        let stale = json!({"id":first[0]["id"],"ok":{"epoch":"e","offset":1}}).to_string();
        assert!(s.on_text(&stale).is_empty());
        let ack = json!({"id":again[0]["id"],"ok":{"epoch":"e","offset":1}}).to_string();
        let out = s.on_text(&ack);
        assert!(matches!(
            &out[..],
            [Action::Answer("caller", Ok(Answered::Published(p)))] if p.offset == 1
        ));
        assert!(s.next_deadline().is_none());
    }

    #[test]
    fn a_publish_made_offline_waits_for_a_connection() {
        let mut s = Test::default();
        let cmd = keyed_pub(json!(1), "k");
        assert!(s.call(cmd, later(10), "caller").unwrap().is_empty());
        assert_eq!(sent(&s.connected())[0]["op"], "pub");
    }

    #[test]
    fn a_call_past_its_deadline_is_answered_timeout_and_its_reply_ignored() {
        let mut s = Test::default();
        s.connected();
        let deadline = later(1);
        let cmd = Command::History {
            ch: "a".into(),
            since: None,
            limit: None,
        };
        let frames = sent(&s.call(cmd, deadline, "caller").unwrap());
        assert_eq!(s.next_deadline(), Some(deadline));
        assert!(s.expire(deadline - Duration::from_millis(1)).is_empty());
        let out = s.expire(deadline);
        assert!(matches!(
            &out[..],
            [Action::Answer("caller", Err(ChannelError::Timeout))]
        ));
        let reply = json!({"id":frames[0]["id"],"ok":{"epoch":"e","offset":0,"pubs":[]}}).to_string();
        assert!(s.on_text(&reply).is_empty());
    }

    #[test]
    fn an_error_reply_answers_the_caller_with_the_servers_error() {
        let mut s = Test::default();
        s.connected();
        let cmd = keyed_pub(json!(1), "k");
        let frames = sent(&s.call(cmd, later(10), "caller").unwrap());
        let reply = json!({"id":frames[0]["id"],"err":{"code":4,"msg":"data too large"}}).to_string();
        let out = s.on_text(&reply);
        assert!(matches!(
            &out[..],
            [Action::Answer("caller", Err(ChannelError::Server(e)))] if e.code == ErrorCode::LimitExceeded
        ));
    }

    #[test]
    fn a_refused_subscription_is_reported_and_dropped() {
        let mut s = Test::default();
        s.connected();
        let frames = sent(&s.subscribe("a".into(), None).unwrap());
        let reply = json!({"id":frames[0]["id"],"err":{"code":4,"msg":"too many subscriptions"}}).to_string();
        let out = s.on_text(&reply);
        assert!(matches!(&out[..], [Action::Emit(ChannelEvent::SubscribeFailed { ch, .. })] if ch == "a"));
        assert!(reconnect(&mut s).is_empty());
        assert!(s.subscribe("a".into(), None).is_ok());
    }

    /// A state subscribed to "a" at offset 3 of "e1", whose resubscribe (after a
    /// `push unsub` code 6) was refused with error 6 at `t0`; returns the retry delay.
    fn refused_with_6(s: &mut Test, t0: Instant) -> Duration {
        s.on_text(&push("a", 1));
        s.on_text(&push("a", 2));
        s.on_text(&push("a", 3));
        let out = s.on_text(&json!({"push":"unsub","ch":"a","code":6,"reason":"engine"}).to_string());
        let id = sent(&out)[0]["id"].clone();
        let reply = json!({"id":id,"err":{"code":6,"msg":"engine unavailable"}}).to_string();
        let out = s.on_text_at(&reply, t0);
        match &out[..] {
            [Action::Emit(ChannelEvent::SubscribeRetrying { ch, error, retry_in })] => {
                assert_eq!(ch, "a");
                assert!(!error.is_fatal());
                *retry_in
            }
            other => panic!("expected SubscribeRetrying, got {other:?}"),
        }
    }

    fn quick() -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            ..BackoffConfig::default()
        }
    }

    #[test]
    fn a_subscription_refused_with_error_6_is_retried_after_a_growing_backoff_from_its_position() {
        let mut s = subscribed_at(0).with_retry(quick());
        let t0 = later(0);
        let first = refused_with_6(&mut s, t0);
        assert!(
            first >= Duration::from_millis(100) && first < Duration::from_millis(150),
            "{first:?}"
        );
        assert_eq!(s.next_deadline(), Some(t0 + first));
        assert!(
            sent(&s.expire(t0 + first - Duration::from_millis(1))).is_empty(),
            "not before its time"
        );
        let again = sent(&s.expire(t0 + first));
        assert_eq!(again.len(), 1);
        assert_eq!(again[0]["op"], "sub");
        assert_eq!(again[0]["since"], json!({"epoch":"e1","offset":3}));
        // Refused again: the delay grows.
        let reply = json!({"id":again[0]["id"],"err":{"code":6,"msg":"still down"}}).to_string();
        let out = s.on_text_at(&reply, t0 + first);
        let Some(Action::Emit(ChannelEvent::SubscribeRetrying { retry_in, .. })) = out.first() else {
            panic!("{out:?}");
        };
        assert!(*retry_in >= Duration::from_millis(200), "{retry_in:?}");
        let again = sent(&s.expire(t0 + first + *retry_in));
        // Accepted: resumes from offset 3, nothing more is scheduled.
        let out = s.on_text(&sub_reply(&again[0]["id"], "e1", 5, &[4, 5], Some(true)));
        assert_eq!(delivered(&out), vec![4, 5]);
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn unsubscribing_stops_the_retries_of_a_refused_subscription() {
        let mut s = subscribed_at(0).with_retry(quick());
        let t0 = later(0);
        let d = refused_with_6(&mut s, t0);
        s.unsubscribe("a").unwrap();
        assert_eq!(s.next_deadline(), None);
        assert!(sent(&s.expire(t0 + d)).iter().all(|f| f["op"] != "sub"));
    }

    #[test]
    fn a_final_unsub_push_ends_the_subscription() {
        let mut s = subscribed_at(0);
        let out = s.on_text(&json!({"push":"unsub","ch":"a","code":3,"reason":"no"}).to_string());
        assert!(matches!(&out[..], [Action::Emit(ChannelEvent::Unsubscribed { ch, .. })] if ch == "a"));
        assert!(delivered(&s.on_text(&push("a", 1))).is_empty());
        assert!(reconnect(&mut s).is_empty());
    }

    #[test]
    fn an_unsub_push_with_code_6_subscribes_again_from_the_position() {
        let mut s = subscribed_at(0);
        s.on_text(&push("a", 1));
        let out = s.on_text(&json!({"push":"unsub","ch":"a","code":6,"reason":"resubscribe"}).to_string());
        let frames = sent(&out);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0]["since"], json!({"epoch":"e1","offset":1}));
    }

    #[test]
    fn unsubscribe_stops_delivery_at_once() {
        let mut s = subscribed_at(0);
        let frames = sent(&s.unsubscribe("a").unwrap());
        assert_eq!(frames[0]["op"], "unsub");
        assert!(delivered(&s.on_text(&push("a", 1))).is_empty());
        assert!(matches!(s.unsubscribe("a"), Err(ChannelError::NotSubscribed(_))));
    }

    #[test]
    fn bad_calls_are_refused_before_anything_is_sent() {
        let mut s = Test::default();
        s.connected();
        assert!(matches!(
            s.subscribe("no spaces".into(), None),
            Err(ChannelError::InvalidChannel { .. })
        ));
        s.subscribe("a".into(), None).unwrap();
        assert!(matches!(
            s.subscribe("a".into(), None),
            Err(ChannelError::AlreadySubscribed(_))
        ));
    }

    #[test]
    fn close_answers_every_waiting_caller() {
        let mut s = Test::default();
        let cmd = |k: &str| keyed_pub(json!(1), k);
        s.call(cmd("1"), later(10), "one").unwrap();
        s.call(cmd("2"), later(10), "two").unwrap();
        let out = s.close();
        assert_eq!(out.len(), 2);
        assert!(
            out.iter()
                .all(|a| matches!(a, Action::Answer(_, Err(ChannelError::Closed))))
        );
    }

    #[test]
    fn frames_that_are_not_protocol_v1_are_ignored() {
        let mut s = subscribed_at(0);
        for junk in ["not json", "[1]", "{\"push\":\"dance\"}", "{\"id\":99,\"ok\":{}}"] {
            assert!(s.on_text(junk).is_empty(), "{junk}");
        }
        assert_eq!(delivered(&s.on_text(&push("a", 1))), [1]);
    }

    #[test]
    fn hello_goes_first_on_every_connection_then_the_subscriptions_with_joins() {
        let hello = Command::Hello {
            token: Some("t".into()),
            user: None,
            info: None,
        };
        let mut s: Test = State::with_identity(Some(hello), true);
        s.subscribe("a".into(), None).unwrap();
        for _ in 0..2 {
            let frames = sent(&s.connected());
            assert_eq!(frames[0]["op"], "hello");
            assert_eq!(frames[0]["token"], "t");
            assert_eq!(frames[1]["op"], "sub");
            assert_eq!(frames[1]["joins"], true);
            s.disconnected();
        }
    }

    #[test]
    fn joins_and_leaves_of_subscribed_channels_are_events_and_others_are_dropped() {
        let mut s: Test = State::default();
        s.subscribe("a".into(), None).unwrap();
        s.connected();
        let join = json!({"push":"join","ch":"a","client":"2","user":"ann"}).to_string();
        let out = s.on_text(&join);
        assert!(matches!(&out[..], [Action::Emit(ChannelEvent::Join(m))] if m.user == "ann"));
        let other = json!({"push":"leave","ch":"b","client":"2","user":"ann"}).to_string();
        assert!(s.on_text(&other).is_empty());
    }
}
