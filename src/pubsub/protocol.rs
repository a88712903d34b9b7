//! Protocol v1 on `/ws`: the wire types, shared by the server and the Rust client.
//!
//! **Owns** nothing and does no I/O: these are the JSON shapes (`serde`) and the rules
//! for what a valid command is. Every frame is one text frame holding one JSON object.
//! `docs/protocol.md` is the reference written from this file; keep the two in step.
//!
//! - Client to server: a [`Request`] — an `"id"` (1 to 2^53-1, chosen by the client) and
//!   an `"op"` with its fields ([`Command`]).
//! - Server to client: a [`Reply`] to each command, with the same id (`{"id":N,"ok":..}`
//!   or `{"id":N,"err":..}`), an id-less `{"err":..}` for a frame that has no valid id,
//!   and [`Push`]es (`{"push":"pub",..}`, `{"push":"unsub",..}`, `{"push":"join",..}`,
//!   `{"push":"leave",..}`). [`ServerFrame`] reads any of them.
//!
//! Every type derives both `Serialize` and `Deserialize`, so either side can write and
//! read it. Unknown fields are ignored (a newer peer may add some); a known field of the
//! wrong type is an error. The server reads commands with [`parse_request`], which tells
//! a frame with no valid id (answered without an id) from a command with a bad field
//! (answered with its id).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The WebSocket subprotocol name of protocol v1 (`Sec-WebSocket-Protocol: wshub.v1`).
pub const SUBPROTOCOL: &str = "wshub.v1";

/// The largest valid command id: 2^53-1, the largest integer every JSON reader (a
/// browser's included) holds exactly.
pub const MAX_ID: u64 = (1 << 53) - 1;

/// The longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// The longest idempotency key, in bytes (keys are kept for the idempotency window,
/// so their size is bounded).
pub const MAX_KEY_LEN: usize = 255;

/// A place in a channel's stream: the channel's epoch and an offset in it.
///
/// The epoch is opaque: it changes whenever the channel's state is created anew (a
/// server restart, or the state expired), and offsets compare only within one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamPosition {
    /// The channel's epoch.
    pub epoch: String,
    /// The offset: 0 before the first publication, then one more for each.
    pub offset: u64,
}

/// A command's operation and fields, tagged by `"op"`.
///
/// `#[non_exhaustive]`: later versions may add ops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
#[non_exhaustive]
pub enum Command {
    /// Say who this client is: a `token` (token mode) or a `user` (open mode), and the
    /// `info` its presence entry carries. The reply is a [`Welcome`].
    Hello {
        /// A signed token (JWT); required in token mode, ignored in open mode.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// The user name, in open mode (default `""`); ignored in token mode.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// A JSON object of at most [`MAX_INFO_LEN`] bytes, attached to the presence
        /// entry (in token mode the token's `info` claim wins).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        info: Option<Value>,
    },
    /// Subscribe to `ch`. With `since`, recover what was published after it.
    Sub {
        /// The channel.
        ch: String,
        /// The last position the client saw, to recover from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<StreamPosition>,
        /// Also push `join` and `leave` when other connections subscribe to or leave `ch`.
        #[serde(default, skip_serializing_if = "is_false")]
        joins: bool,
    },
    /// End the subscription to `ch`.
    Unsub {
        /// The channel.
        ch: String,
    },
    /// Publish `data` to `ch` (subscribed or not).
    Pub {
        /// The channel.
        ch: String,
        /// Any JSON value.
        data: Value,
        /// An idempotency key: a `pub` with a `(ch, key)` seen within the idempotency
        /// window returns the first one's position and publishes nothing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// Read the channel's history.
    History {
        /// The channel.
        ch: String,
        /// Only publications after this position (same rules as `sub`'s).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<StreamPosition>,
        /// At most this many publications, the oldest first (default and maximum: the
        /// history size). 0 asks for the position alone.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
    },
    /// Who is subscribed to `ch`: a [`PresenceList`].
    Presence {
        /// The channel.
        ch: String,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Command {
    /// The wire name of this command's op.
    pub fn op(&self) -> &'static str {
        match self {
            Command::Sub { .. } => "sub",
            Command::Unsub { .. } => "unsub",
            Command::Pub { .. } => "pub",
            Command::History { .. } => "history",
            Command::Hello { .. } => "hello",
            Command::Presence { .. } => "presence",
        }
    }

    /// The channel the command is about (`None` for `hello`).
    pub fn channel(&self) -> Option<&str> {
        match self {
            Command::Sub { ch, .. }
            | Command::Unsub { ch }
            | Command::Pub { ch, .. }
            | Command::History { ch, .. }
            | Command::Presence { ch } => Some(ch),
            Command::Hello { .. } => None,
        }
    }
}

/// The ops this version knows; any other is error 1 ("unknown op").
pub const OPS: &[&str] = &["hello", "sub", "unsub", "pub", "history", "presence"];

/// The largest presence `info`, in bytes of its JSON text (a `hello`'s or a token's).
pub const MAX_INFO_LEN: usize = 1024;

/// The longest user name, in bytes.
pub const MAX_USER_LEN: usize = 255;

/// The `ok` of a `hello` reply: `{"client":"<connection id>","user":"<user>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// This connection's id, as `from.client` and presence entries show it.
    pub client: String,
    /// The user the server took this client for.
    pub user: String,
}

/// One connection in a channel's presence, and the body of `push join` / `push leave`
/// (with `ch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// The channel: set in pushes, absent in a [`PresenceList`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ch: Option<String>,
    /// The connection's id.
    pub client: String,
    /// Its user (`""` when it never said).
    pub user: String,
    /// Its presence info, when it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Value>,
}

/// The `ok` of a `presence` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceList {
    /// The subscribed connections, at most the server's presence-list limit of them.
    pub clients: Vec<Member>,
    /// How many connections are subscribed (exact, even past the list limit).
    pub num_clients: u64,
    /// How many distinct users they are (exact).
    pub num_users: u64,
}

/// One command as sent: `{"id":N,"op":..,..}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the client, 1 to [`MAX_ID`]; the reply carries it back.
    pub id: u64,
    /// The op and its fields.
    #[serde(flatten)]
    pub command: Command,
}

/// Who made a publication: the connection id of the client that published it. Absent on
/// publications made through the server's API ([`crate::Hub::publish`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// The publishing connection's id, as a string.
    pub client: String,
}

/// One publication, as it appears in a `pubs` array (and, with `"push":"pub"`, as a push).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Publication {
    /// The channel.
    pub ch: String,
    /// Its offset in the channel's current epoch.
    pub offset: u64,
    /// What was published.
    pub data: Value,
    /// Who published it, when a client did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ClientInfo>,
}

/// The `ok` of a `sub` reply and of a `history` reply; `recovered` only when the command
/// had `since`.
///
/// Generic over the publication type so the server can send publications it keeps
/// already encoded; a client reads `Snapshot` (of [`Publication`]s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot<P = Publication> {
    /// The channel's epoch.
    pub epoch: String,
    /// The channel's top offset when the snapshot was taken: pushes follow from top+1.
    pub offset: u64,
    /// The publications: recovered ones for `sub` with `since`, none for `sub` without;
    /// the history asked for by `history`. Oldest first.
    pub pubs: Vec<P>,
    /// Only on `sub` or `history` with `since`: whether every publication after `since`
    /// is in `pubs`.
    /// `false` means the client must reload its state from the application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

/// The `ok` of an `unsub` reply: `{}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Empty {}

/// Error codes, the same in replies and in `push unsub`. Carried as integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "u16", into = "u16")]
#[non_exhaustive]
pub enum ErrorCode {
    /// 1: malformed frame, unknown op, missing or wrongly typed field, invalid channel
    /// name. Fix the request; do not retry it as is.
    BadRequest,
    /// 2: the command does not fit the connection's state (already subscribed, not
    /// subscribed).
    BadState,
    /// 3: not permitted (reserved for permissions).
    Forbidden,
    /// 4: a limit was reached (too many subscriptions, too many channels, data too
    /// large).
    LimitExceeded,
    /// 6: temporarily unavailable: retry later.
    Unavailable,
    /// 7: not authenticated (reserved for identity).
    Unauthorized,
    /// A code this version does not know (from a newer server).
    Other(u16),
}

impl From<ErrorCode> for u16 {
    fn from(code: ErrorCode) -> u16 {
        match code {
            ErrorCode::BadRequest => 1,
            ErrorCode::BadState => 2,
            ErrorCode::Forbidden => 3,
            ErrorCode::LimitExceeded => 4,
            ErrorCode::Unavailable => 6,
            ErrorCode::Unauthorized => 7,
            ErrorCode::Other(n) => n,
        }
    }
}

impl From<u16> for ErrorCode {
    fn from(n: u16) -> ErrorCode {
        match n {
            1 => ErrorCode::BadRequest,
            2 => ErrorCode::BadState,
            3 => ErrorCode::Forbidden,
            4 => ErrorCode::LimitExceeded,
            6 => ErrorCode::Unavailable,
            7 => ErrorCode::Unauthorized,
            n => ErrorCode::Other(n),
        }
    }
}

/// An error: `{"code":C,"msg":".."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What kind of error.
    pub code: ErrorCode,
    /// Human-readable detail; not for matching on.
    pub msg: String,
}

impl ErrorBody {
    /// An error with `code` and `msg`.
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code,
            msg: msg.into(),
        }
    }
}

/// Success or failure of a command: serialised as `"ok":..` or `"err":..`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome<T> {
    /// `"ok"`: the op's result.
    #[serde(rename = "ok")]
    Ok(T),
    /// `"err"`: why it failed.
    #[serde(rename = "err")]
    Err(ErrorBody),
}

/// A reply: `{"id":N,"ok":{..}}`, `{"id":N,"err":{..}}`, or `{"err":{..}}` for a frame
/// that had no valid id.
///
/// `T` is the op's result type ([`Snapshot`], [`StreamPosition`], [`Empty`]); read
/// replies as `Reply<Value>` and convert once the id says which command it answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply<T = Value> {
    /// The command's id; absent when the frame had none (then `outcome` is an error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// The result.
    #[serde(flatten)]
    pub outcome: Outcome<T>,
}

impl<T> Reply<T> {
    /// `{"id":id,"ok":ok}`.
    pub fn ok(id: u64, ok: T) -> Reply<T> {
        Reply {
            id: Some(id),
            outcome: Outcome::Ok(ok),
        }
    }

    /// `{"id":id,"err":..}`, or id-less when `id` is `None`.
    pub fn err(id: Option<u64>, err: ErrorBody) -> Reply<T> {
        Reply {
            id,
            outcome: Outcome::Err(err),
        }
    }
}

/// A message the server sends unasked, tagged by `"push"`.
///
/// `#[non_exhaustive]`: later versions may add pushes; a client should ignore a push it
/// does not know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "push", rename_all = "lowercase")]
#[non_exhaustive]
pub enum Push {
    /// A publication on a subscribed channel.
    Pub(Publication),
    /// The server ended the subscription to `ch`.
    Unsub {
        /// The channel.
        ch: String,
        /// Why, as an error code; [`ErrorCode::Unavailable`] means subscribe again with
        /// `since` (the state is recoverable).
        code: ErrorCode,
        /// Human-readable detail.
        reason: String,
    },
    /// Another connection subscribed to a channel this one subscribed to with `joins`.
    Join(Member),
    /// Another connection left such a channel: it unsubscribed, closed, died or was cut.
    Leave(Member),
}

/// Anything the server sends on `/ws`: a reply or a push.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ServerFrame {
    /// A push (it has a `"push"` field).
    Push(Push),
    /// A reply (it has `"ok"` or `"err"`).
    Reply(Reply<Value>),
}

/// A frame the server could not take as a command: what to answer. `id` is `None` when
/// the frame had no valid id (answered `{"err":..}`); the code is
/// [`ErrorCode::BadRequest`] (a channel, key or user over its size limit included), but
/// for a `hello` `info` over [`MAX_INFO_LEN`], which is [`ErrorCode::LimitExceeded`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The command's id, when it had a valid one.
    pub id: Option<u64>,
    /// The answer.
    pub err: ErrorBody,
}

impl Rejected {
    fn bad(id: Option<u64>, msg: impl Into<String>) -> Rejected {
        Rejected {
            id,
            err: ErrorBody::new(ErrorCode::BadRequest, msg),
        }
    }

    /// The reply to send.
    pub fn reply(self) -> Reply<Empty> {
        Reply::err(self.id, self.err)
    }
}

/// Reads one text frame as a command, checking everything that needs no server state:
/// JSON object, id, op, field types, channel name, key length.
pub fn parse_request(text: &str) -> Result<Request, Rejected> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| Rejected::bad(None, format!("malformed JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(Rejected::bad(None, "a command is a JSON object"));
    };
    let id = valid_id(&map)
        .ok_or_else(|| Rejected::bad(None, format!("\"id\" must be an integer from 1 to {MAX_ID}")))?;
    match map.get("op") {
        Some(Value::String(op)) if OPS.contains(&op.as_str()) => {}
        Some(Value::String(op)) => {
            return Err(Rejected::bad(Some(id), format!("unknown op {op:?}")));
        }
        _ => return Err(Rejected::bad(Some(id), "\"op\" must be a string")),
    }
    let command: Command =
        serde_json::from_value(Value::Object(map)).map_err(|e| Rejected::bad(Some(id), e.to_string()))?;
    if let Some(ch) = command.channel() {
        validate_channel(ch).map_err(|msg| Rejected::bad(Some(id), msg))?;
    }
    if let Command::Hello { user, info, .. } = &command {
        if user.as_ref().is_some_and(|u| u.len() > MAX_USER_LEN) {
            return Err(Rejected::bad(
                Some(id),
                format!("\"user\" must be at most {MAX_USER_LEN} bytes"),
            ));
        }
        if let Some(info) = info {
            validate_info(info).map_err(|err| Rejected { id: Some(id), err })?;
        }
    }
    if let Command::Pub { key: Some(key), .. } = &command {
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(Rejected::bad(
                Some(id),
                format!("\"key\" must be 1 to {MAX_KEY_LEN} bytes"),
            ));
        }
    }
    Ok(Request { id, command })
}

/// Checks a presence `info`: a JSON object (error 1) of at most [`MAX_INFO_LEN`] bytes
/// as JSON text (error 4).
pub fn validate_info(info: &Value) -> Result<(), ErrorBody> {
    if !info.is_object() {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            "\"info\" must be a JSON object",
        ));
    }
    let len = serde_json::to_string(info).map_or(usize::MAX, |s| s.len());
    if len > MAX_INFO_LEN {
        return Err(ErrorBody::new(
            ErrorCode::LimitExceeded,
            format!("\"info\" must be at most {MAX_INFO_LEN} bytes of JSON, got {len}"),
        ));
    }
    Ok(())
}

fn valid_id(map: &Map<String, Value>) -> Option<u64> {
    let id = map.get("id")?.as_u64()?;
    (1..=MAX_ID).contains(&id).then_some(id)
}

/// Checks a channel name: 1 to [`MAX_CHANNEL_LEN`] bytes of `A-Z a-z 0-9 _ - : . @ /`.
/// The error says what is wrong.
pub fn validate_channel(ch: &str) -> Result<(), String> {
    if ch.is_empty() || ch.len() > MAX_CHANNEL_LEN {
        return Err(format!(
            "channel name must be 1 to {MAX_CHANNEL_LEN} bytes, got {}",
            ch.len()
        ));
    }
    match ch.chars().find(|&c| !is_channel_char(c)) {
        None => Ok(()),
        Some(c) => Err(format!(
            "channel name may hold only A-Z a-z 0-9 _ - : . @ /, not {c:?}"
        )),
    }
}

fn is_channel_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '.' | '@' | '/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Request, Rejected> {
        parse_request(&v.to_string())
    }

    #[test]
    fn a_sub_with_since_round_trips() {
        let req = Request {
            id: 7,
            command: Command::Sub {
                joins: false,
                ch: "room:1".into(),
                since: Some(StreamPosition {
                    epoch: "ab".into(),
                    offset: 3,
                }),
            },
        };
        let text = serde_json::to_string(&req).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!({"id":7,"op":"sub","ch":"room:1","since":{"epoch":"ab","offset":3}})
        );
        assert_eq!(parse_request(&text).unwrap(), req);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), req);
    }

    #[test]
    fn every_op_parses_with_its_fields() {
        let pub_ = parse(json!({"id":1,"op":"pub","ch":"a","data":{"x":[1]},"key":"k1"})).unwrap();
        assert_eq!(
            pub_.command,
            Command::Pub {
                ch: "a".into(),
                data: json!({"x":[1]}),
                key: Some("k1".into())
            }
        );
        let unsub = parse(json!({"id":2,"op":"unsub","ch":"a"})).unwrap();
        assert_eq!(unsub.command, Command::Unsub { ch: "a".into() });
        let hist = parse(json!({"id":3,"op":"history","ch":"a","limit":5})).unwrap();
        assert_eq!(
            hist.command,
            Command::History {
                ch: "a".into(),
                since: None,
                limit: Some(5)
            }
        );
        let sub = parse(json!({"id":4,"op":"sub","ch":"a"})).unwrap();
        assert_eq!(sub.command.op(), "sub");
    }

    #[test]
    fn null_data_is_data() {
        let req = parse(json!({"id":1,"op":"pub","ch":"a","data":null})).unwrap();
        assert!(matches!(
            req.command,
            Command::Pub {
                data: Value::Null,
                ..
            }
        ));
    }

    /// `r` answers the command with id `id` with error `code`, and its message says `text`.
    fn assert_rejected(r: &Rejected, id: Option<u64>, code: ErrorCode, text: &str) {
        assert_eq!((r.id, r.err.code), (id, code), "{}", r.err.msg);
        assert!(r.err.msg.contains(text), "{text:?} not in {:?}", r.err.msg);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        assert!(parse(json!({"id":1,"op":"unsub","ch":"a","extra":true})).is_ok());
    }

    #[test]
    fn malformed_json_has_no_id() {
        let r = parse_request("{\"id\":1,").unwrap_err();
        assert_rejected(&r, None, ErrorCode::BadRequest, "malformed JSON");
    }

    #[test]
    fn a_non_object_has_no_id() {
        for text in ["[1,2]", "\"sub\"", "42", "null"] {
            let r = parse_request(text).unwrap_err();
            assert_eq!(r.id, None, "{text}");
            assert_eq!(r.err.code, ErrorCode::BadRequest);
        }
    }

    #[test]
    fn ids_outside_1_to_2_pow_53_minus_1_are_invalid() {
        for id in [
            json!(0),
            json!(-1),
            json!(1.5),
            json!("1"),
            json!(MAX_ID + 1),
            json!(null),
        ] {
            let r = parse(json!({"id":id,"op":"unsub","ch":"a"})).unwrap_err();
            assert_eq!(r.id, None, "{id}");
        }
        assert!(parse(json!({"op":"unsub","ch":"a"})).unwrap_err().id.is_none());
        assert_eq!(
            parse(json!({"id":MAX_ID,"op":"unsub","ch":"a"})).unwrap().id,
            MAX_ID
        );
        assert_eq!(parse(json!({"id":1,"op":"unsub","ch":"a"})).unwrap().id, 1);
    }

    #[test]
    fn the_largest_id_is_9007199254740991() {
        // Literal numbers: bounds computed from `MAX_ID` would move with it.
        assert_eq!(
            parse(json!({"id":9_007_199_254_740_991_u64,"op":"unsub","ch":"a"}))
                .unwrap()
                .id,
            9_007_199_254_740_991
        );
        let r = parse(json!({"id":9_007_199_254_740_992_u64,"op":"unsub","ch":"a"})).unwrap_err();
        assert_eq!(r.id, None);
    }

    #[test]
    fn a_hello_user_of_255_bytes_is_taken_and_one_of_256_is_error_1() {
        let longest = "u".repeat(255);
        let Command::Hello { user, .. } = parse(json!({"id":1,"op":"hello","user":longest}))
            .unwrap()
            .command
        else {
            panic!("not a hello");
        };
        assert_eq!(user.as_deref(), Some(longest.as_str()));
        let r = parse(json!({"id":2,"op":"hello","user":"u".repeat(256)})).unwrap_err();
        assert_rejected(
            &r,
            Some(2),
            ErrorCode::BadRequest,
            "\"user\" must be at most 255 bytes",
        );
    }

    #[test]
    fn a_hello_info_of_1024_bytes_of_json_is_taken_and_one_of_1025_is_error_4() {
        // `{"x":"` and `"}` are 8 bytes of the JSON text.
        let exactly = json!({"x": "y".repeat(1024 - 8)});
        assert_eq!(serde_json::to_string(&exactly).unwrap().len(), 1024);
        assert!(parse(json!({"id":1,"op":"hello","info":exactly})).is_ok());
        let over = json!({"x": "y".repeat(1025 - 8)});
        let r = parse(json!({"id":2,"op":"hello","info":over})).unwrap_err();
        assert_rejected(
            &r,
            Some(2),
            ErrorCode::LimitExceeded,
            "at most 1024 bytes of JSON, got 1025",
        );
    }

    #[test]
    fn unknown_op_keeps_the_id() {
        let r = parse(json!({"id":9,"op":"dance","ch":"a"})).unwrap_err();
        assert_rejected(&r, Some(9), ErrorCode::BadRequest, "unknown op");
        let r = parse(json!({"id":9,"ch":"a"})).unwrap_err();
        assert_eq!(r.id, Some(9));
    }

    #[test]
    fn missing_or_mistyped_fields_keep_the_id() {
        for bad in [
            json!({"id":5,"op":"sub"}),
            json!({"id":5,"op":"sub","ch":7}),
            json!({"id":5,"op":"pub","ch":"a"}),
            json!({"id":5,"op":"pub","ch":"a","data":1,"key":3}),
            json!({"id":5,"op":"sub","ch":"a","since":{"epoch":"e"}}),
            json!({"id":5,"op":"sub","ch":"a","since":{"epoch":"e","offset":-1}}),
            json!({"id":5,"op":"history","ch":"a","limit":"all"}),
        ] {
            let r = parse(bad.clone()).unwrap_err();
            assert_eq!(r.id, Some(5), "{bad}");
            assert_eq!(r.err.code, ErrorCode::BadRequest, "{bad}");
        }
    }

    #[test]
    fn channel_names_are_1_to_255_bytes_of_the_allowed_set() {
        assert!(validate_channel("a").is_ok());
        assert!(validate_channel("Room_1-x:y.z@host/p").is_ok());
        assert!(validate_channel(&"a".repeat(255)).is_ok());
        assert!(validate_channel("").is_err());
        assert!(validate_channel(&"a".repeat(256)).is_err());
        for bad in ["a b", "a*", "é", "a\n", "a#", "a?", "a,b", "a\"b"] {
            assert!(validate_channel(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_bad_channel_name_is_error_1_with_the_id() {
        let r = parse(json!({"id":3,"op":"pub","ch":"no spaces","data":1})).unwrap_err();
        assert_rejected(&r, Some(3), ErrorCode::BadRequest, "channel name");
    }

    #[test]
    fn keys_are_1_to_255_bytes() {
        assert!(parse(json!({"id":1,"op":"pub","ch":"a","data":1,"key":""})).is_err());
        let long = "k".repeat(MAX_KEY_LEN + 1);
        assert!(parse(json!({"id":1,"op":"pub","ch":"a","data":1,"key":long})).is_err());
        let max = "k".repeat(MAX_KEY_LEN);
        assert!(parse(json!({"id":1,"op":"pub","ch":"a","data":1,"key":max})).is_ok());
    }

    #[test]
    fn replies_have_the_documented_shapes() {
        let ok = Reply::ok(
            4,
            StreamPosition {
                epoch: "e".into(),
                offset: 9,
            },
        );
        assert_eq!(
            serde_json::to_value(&ok).unwrap(),
            json!({"id":4,"ok":{"epoch":"e","offset":9}})
        );
        let err: Reply<Empty> = Reply::err(Some(4), ErrorBody::new(ErrorCode::BadState, "not subscribed"));
        assert_eq!(
            serde_json::to_value(&err).unwrap(),
            json!({"id":4,"err":{"code":2,"msg":"not subscribed"}})
        );
        let anon: Reply<Empty> = Reply::err(None, ErrorBody::new(ErrorCode::BadRequest, "x"));
        assert_eq!(
            serde_json::to_value(&anon).unwrap(),
            json!({"err":{"code":1,"msg":"x"}})
        );
        assert_eq!(
            serde_json::to_value(Reply::ok(1, Empty {})).unwrap(),
            json!({"id":1,"ok":{}})
        );
    }

    #[test]
    fn snapshots_carry_recovered_only_when_set() {
        let snap: Snapshot = Snapshot {
            epoch: "e".into(),
            offset: 2,
            pubs: vec![Publication {
                ch: "a".into(),
                offset: 2,
                data: json!("hi"),
                from: Some(ClientInfo { client: "3".into() }),
            }],
            recovered: Some(true),
        };
        let v = serde_json::to_value(&snap).unwrap();
        assert_eq!(
            v,
            json!({"epoch":"e","offset":2,"recovered":true,
                   "pubs":[{"ch":"a","offset":2,"data":"hi","from":{"client":"3"}}]})
        );
        assert_eq!(serde_json::from_value::<Snapshot>(v).unwrap(), snap);
        let plain: Snapshot = Snapshot {
            epoch: "e".into(),
            offset: 0,
            pubs: vec![],
            recovered: None,
        };
        assert_eq!(
            serde_json::to_value(&plain).unwrap(),
            json!({"epoch":"e","offset":0,"pubs":[]})
        );
    }

    #[test]
    fn server_frames_read_as_pushes_or_replies() {
        let push: ServerFrame = serde_json::from_value(
            json!({"push":"pub","ch":"a","offset":1,"data":{"n":1},"from":{"client":"2"}}),
        )
        .unwrap();
        assert_eq!(
            push,
            ServerFrame::Push(Push::Pub(Publication {
                ch: "a".into(),
                offset: 1,
                data: json!({"n":1}),
                from: Some(ClientInfo { client: "2".into() }),
            }))
        );
        let api_pub: ServerFrame =
            serde_json::from_value(json!({"push":"pub","ch":"a","offset":2,"data":null})).unwrap();
        assert!(matches!(
            api_pub,
            ServerFrame::Push(Push::Pub(Publication { from: None, .. }))
        ));
        let unsub: ServerFrame =
            serde_json::from_value(json!({"push":"unsub","ch":"a","code":6,"reason":"resubscribe"})).unwrap();
        assert_eq!(
            unsub,
            ServerFrame::Push(Push::Unsub {
                ch: "a".into(),
                code: ErrorCode::Unavailable,
                reason: "resubscribe".into()
            })
        );
        let ok: ServerFrame =
            serde_json::from_value(json!({"id":3,"ok":{"epoch":"e","offset":0,"pubs":[]}})).unwrap();
        let ServerFrame::Reply(Reply {
            id: Some(3),
            outcome: Outcome::Ok(body),
        }) = ok
        else {
            panic!("not an ok reply: {ok:?}");
        };
        let snap: Snapshot = serde_json::from_value(body).unwrap();
        assert_eq!(snap.offset, 0);
        let err: ServerFrame = serde_json::from_value(json!({"err":{"code":1,"msg":"m"}})).unwrap();
        assert_eq!(
            err,
            ServerFrame::Reply(Reply::err(None, ErrorBody::new(ErrorCode::BadRequest, "m")))
        );
    }

    #[test]
    fn error_codes_are_integers_and_unknown_ones_survive() {
        for (code, n) in [
            (ErrorCode::BadRequest, 1),
            (ErrorCode::BadState, 2),
            (ErrorCode::Forbidden, 3),
            (ErrorCode::LimitExceeded, 4),
            (ErrorCode::Unavailable, 6),
            (ErrorCode::Unauthorized, 7),
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), json!(n));
            assert_eq!(serde_json::from_value::<ErrorCode>(json!(n)).unwrap(), code);
        }
        assert_eq!(
            serde_json::from_value::<ErrorCode>(json!(42)).unwrap(),
            ErrorCode::Other(42)
        );
        assert_eq!(serde_json::to_value(ErrorCode::Other(42)).unwrap(), json!(42));
    }

    #[test]
    fn commands_serialize_without_absent_options() {
        let req = Request {
            id: 1,
            command: Command::Pub {
                ch: "a".into(),
                data: json!([1, 2]),
                key: None,
            },
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({"id":1,"op":"pub","ch":"a","data":[1,2]})
        );
    }
}
