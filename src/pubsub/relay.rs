//! The rules a node applies to a channel stream it does not own (the Redis engine,
//! issue #13): continuity of what it relays, the `since` decision over what the engine
//! returned, and the wire forms publications travel in. I/O-free.
//!
//! **Owns** nothing. The hub thread calls [`continuity`] for each publication its Redis
//! subscriber thread hands it, and the engine thread calls [`recovered`] after reading a
//! stream. Each rule is a pure function, unit-tested here without Redis.
//!
//! A node tracks, per channel, the position of the last publication it relayed. The next
//! one must be the same epoch and exactly one more; anything else means the node missed
//! something (its PUB/SUB connection dropped, Redis dropped it as a slow subscriber, the
//! channel was flushed and got a new epoch). The node then cannot say what its
//! subscribers missed, so it ends their subscriptions with `push unsub` code 6 and their
//! clients resubscribe with `since`, recovering from the stream in Redis.

use crate::pubsub::encode;
use crate::pubsub::protocol::StreamPosition;
use serde_json::Value;

/// How a relayed publication follows the last one the node relayed on its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuity {
    /// The first one seen, or the next offset in the same epoch: deliver it.
    InOrder,
    /// At or below the last offset of the same epoch: already delivered, drop it.
    Duplicate,
    /// An offset was skipped, or the epoch changed: subscribers must resubscribe.
    Broken,
}

/// Decides how (`epoch`, `offset`) follows `last`.
pub fn continuity(last: Option<&StreamPosition>, epoch: &str, offset: u64) -> Continuity {
    match last {
        None => Continuity::InOrder,
        Some(l) if l.epoch != epoch => Continuity::Broken,
        Some(l) if offset == l.offset + 1 => Continuity::InOrder,
        Some(l) if offset <= l.offset => Continuity::Duplicate,
        Some(_) => Continuity::Broken,
    }
}

/// The `since` decision over a stream read from the engine: a client at `since` missed
/// nothing it cannot be given when `since` names the current `epoch`, is not past `top`,
/// and the first publication read after it (`first`) is `since.offset + 1` (the stream
/// holds consecutive offsets, so the rest follow). `first` is `None` when nothing was
/// read.
pub fn recovered(since: &StreamPosition, epoch: &str, top: u64, first: Option<u64>) -> bool {
    since.epoch == epoch && since.offset <= top && (since.offset == top || first == Some(since.offset + 1))
}

/// A publication encoded without its offset, which only the engine assigns: the text
/// before and after the offset digits of its `pubs` form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// `{"ch":"..","offset":`
    pub head: String,
    /// `,"data":..}` (with `"from"` when it has one).
    pub tail: String,
}

impl Template {
    /// The template of a publication of `data` on `ch` from the client with wire id
    /// `from`.
    pub fn new(ch: &str, data: &Value, from: Option<&str>) -> Template {
        let whole = encode::publication_from(ch, 0, data, from);
        // The offset is the second field and a channel name holds no `"` or `,`, so the
        // first `,"offset":0` is the offset's.
        const AT: &str = ",\"offset\":";
        let cut = whole.find(AT).map_or(0, |i| i + AT.len());
        Template {
            head: whole[..cut].to_owned(),
            tail: whole[cut + 1..].to_owned(),
        }
    }

    /// The length of the publication at `offset`.
    pub fn len_at(&self, offset: u64) -> usize {
        self.head.len() + self.tail.len() + offset.to_string().len()
    }
}

/// The PUB/SUB message of a publication: `EPOCH OFFSET PUBLICATION`.
pub fn live_message(epoch: &str, offset: u64, publication: &str) -> String {
    format!("{epoch} {offset} {publication}")
}

/// Reads a PUB/SUB message back: `(epoch, offset, publication)`; `None` if it is not
/// one (something else published on our Redis channel).
pub fn parse_live(message: &str) -> Option<(&str, u64, &str)> {
    let (epoch, rest) = message.split_once(' ')?;
    let (offset, publication) = rest.split_once(' ')?;
    let offset = offset.parse().ok()?;
    publication
        .starts_with('{')
        .then_some((epoch, offset, publication))
}

/// A join or leave as it travels on a channel's PUB/SUB channel: `@join CLIENT MEMBER`
/// or `@leave CLIENT MEMBER`, `MEMBER` the member's JSON without `ch` (as a presence list
/// holds it). It cannot be taken for a publication (an epoch is hex digits, never `@`)
/// and carries no offset: joins and leaves are not part of the channel's stream.
/// (The Redis scripts write these; this is the form they write.)
pub fn presence_message(join: bool, client: &str, member: &str) -> String {
    let kind = if join { "@join" } else { "@leave" };
    format!("{kind} {client} {member}")
}

/// Reads a presence message back: `(join, client, member JSON)`.
pub fn parse_presence(message: &str) -> Option<(bool, &str, &str)> {
    let (kind, rest) = message.split_once(' ')?;
    let join = match kind {
        "@join" => true,
        "@leave" => false,
        _ => return None,
    };
    let (client, member) = rest.split_once(' ')?;
    member.starts_with('{').then_some((join, client, member))
}

/// The push of a member's join or leave on `ch`: `{"push":"join","ch":..,` then the
/// member's fields.
pub fn presence_push(join: bool, ch: &str, member: &str) -> String {
    let kind = if join { "join" } else { "leave" };
    let ch = serde_json::to_string(ch).unwrap_or_default();
    let fields = member.get(1..).unwrap_or_default();
    if fields.trim_start().starts_with('}') {
        format!("{{\"push\":\"{kind}\",\"ch\":{ch}}}")
    } else {
        format!("{{\"push\":\"{kind}\",\"ch\":{ch},{fields}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::protocol::Publication;
    use serde_json::json;

    fn pos(epoch: &str, offset: u64) -> StreamPosition {
        StreamPosition {
            epoch: epoch.into(),
            offset,
        }
    }

    #[test]
    fn the_first_publication_seen_is_in_order() {
        assert_eq!(continuity(None, "e", 17), Continuity::InOrder);
    }

    #[test]
    fn the_next_offset_is_in_order_and_an_old_one_a_duplicate() {
        assert_eq!(continuity(Some(&pos("e", 4)), "e", 5), Continuity::InOrder);
        assert_eq!(continuity(Some(&pos("e", 4)), "e", 4), Continuity::Duplicate);
        assert_eq!(continuity(Some(&pos("e", 4)), "e", 1), Continuity::Duplicate);
    }

    #[test]
    fn a_skipped_offset_or_a_new_epoch_breaks_continuity() {
        assert_eq!(continuity(Some(&pos("e", 4)), "e", 6), Continuity::Broken);
        assert_eq!(continuity(Some(&pos("e", 4)), "f", 5), Continuity::Broken);
        assert_eq!(continuity(Some(&pos("e", 4)), "f", 1), Continuity::Broken);
    }

    #[test]
    fn recovery_needs_the_epoch_the_top_and_the_next_offset() {
        let since = pos("e", 3);
        assert!(recovered(&since, "e", 5, Some(4)));
        assert!(recovered(&since, "e", 3, None), "nothing missed");
        assert!(!recovered(&since, "f", 5, Some(4)), "another epoch");
        assert!(!recovered(&since, "e", 2, None), "past the top");
        assert!(!recovered(&since, "e", 5, Some(5)), "offset 4 left history");
        assert!(!recovered(&since, "e", 5, None), "history is gone");
    }

    #[test]
    fn a_template_with_an_offset_is_the_encoded_publication() {
        let data = json!({"t": "x,\"offset\":9"});
        let t = Template::new("room:1", &data, Some("7"));
        let text = format!("{}{}{}", t.head, 42, t.tail);
        assert_eq!(text, encode::publication("room:1", 42, &data, Some(7)).as_str());
        assert_eq!(t.len_at(42), text.len());
        let p: Publication = serde_json::from_str(&text).unwrap();
        assert_eq!(p.offset, 42);
    }

    #[test]
    fn a_live_message_reads_back() {
        let m = live_message("ab12", 9, r#"{"ch":"a","offset":9,"data":"x y"}"#);
        assert_eq!(
            parse_live(&m),
            Some(("ab12", 9, r#"{"ch":"a","offset":9,"data":"x y"}"#))
        );
        assert_eq!(parse_live("hello"), None);
        assert_eq!(parse_live("e x {}"), None);
        assert_eq!(parse_live("e 1 nope"), None);
    }

    #[test]
    fn a_presence_message_reads_back_and_is_never_a_publication() {
        let member = r#"{"client":"ab-3","user":"ann"}"#;
        let m = presence_message(true, "ab-3", member);
        assert_eq!(parse_presence(&m), Some((true, "ab-3", member)));
        assert_eq!(parse_live(&m), None);
        let l = presence_message(false, "ab-3", member);
        assert_eq!(parse_presence(&l), Some((false, "ab-3", member)));
        assert_eq!(parse_presence("0123abcd 5 {\"ch\":\"a\"}"), None);
    }

    #[test]
    fn a_presence_push_is_the_protocol_s_join_or_leave() {
        use crate::pubsub::protocol::{Push, ServerFrame};
        let member = r#"{"client":"ab-3","user":"ann","info":{"x":1}}"#;
        let text = presence_push(true, "room:1", member);
        let Ok(ServerFrame::Push(Push::Join(m))) = serde_json::from_str::<ServerFrame>(&text) else {
            panic!("{text}");
        };
        assert_eq!(m.ch.as_deref(), Some("room:1"));
        assert_eq!((m.client.as_str(), m.user.as_str()), ("ab-3", "ann"));
        let text = presence_push(false, "room:1", member);
        assert!(matches!(
            serde_json::from_str::<ServerFrame>(&text),
            Ok(ServerFrame::Push(Push::Leave(_)))
        ));
    }
}
