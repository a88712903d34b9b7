//! The server's JSON output for protocol v1, encoded once per publication. I/O-free.
//!
//! **Owns** nothing. A publication is encoded once, when it is published, in its `pubs`
//! form (`{"ch":..,"offset":..,"data":..,"from":..}`, an [`Encoded`]); history keeps
//! that form, a `sub` or `history` reply splices kept ones into its `pubs` array as they
//! are, and the push every subscriber gets is the same bytes with `"push":"pub"` put in
//! front, built once and shared by all of them. Nothing is parsed or encoded again per
//! subscriber. The unit tests read every output back with the [`protocol`] types, so the
//! spliced JSON is checked against the types a client uses.
//!
//! [`protocol`]: crate::pubsub::protocol

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;
use tungstenite::Utf8Bytes;

use crate::pubsub::protocol::{ClientInfo, Reply, Snapshot};

/// One publication in its `pubs` form, encoded: a JSON object starting with `{"ch":`.
/// Shared (reference-counted) text, ready to be a text frame's payload without a copy.
pub type Encoded = Utf8Bytes;

#[derive(Serialize)]
struct PubRef<'a> {
    ch: &'a str,
    offset: u64,
    data: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<ClientInfo>,
}

/// Encodes a publication in its `pubs` form. `from` is the publishing connection's id,
/// `None` for the server API.
pub fn publication(ch: &str, offset: u64, data: &Value, from: Option<u64>) -> Encoded {
    publication_from(ch, offset, data, from.map(|id| id.to_string()).as_deref())
}

/// Encodes a publication in its `pubs` form, `from` the publishing client's wire id
/// (see [`client_id`](crate::pubsub::presence::client_id)).
pub fn publication_from(ch: &str, offset: u64, data: &Value, from: Option<&str>) -> Encoded {
    let p = PubRef {
        ch,
        offset,
        data,
        from: from.map(|client| ClientInfo {
            client: client.to_owned(),
        }),
    };
    // Serialising borrowed strings, integers and a `Value` cannot fail.
    Utf8Bytes::from(serde_json::to_string(&p).unwrap_or_default())
}

/// The push of an encoded publication: `{"push":"pub",` then the publication's fields.
pub fn push(publication: &Encoded) -> Utf8Bytes {
    const HEAD: &str = "{\"push\":\"pub\",";
    let mut out = String::with_capacity(HEAD.len() + publication.len());
    out.push_str(HEAD);
    // The encoded form always starts with `{`; its fields follow it.
    out.push_str(publication.get(1..).unwrap_or_default());
    Utf8Bytes::from(out)
}

/// The ok reply to a `sub` or `history`: `{"id":N,"ok":{"epoch":..,"offset":..,
/// "pubs":[..]}}`, with `"recovered"` when the snapshot has it.
pub fn snapshot_reply(id: u64, snap: &Snapshot<Encoded>) -> Utf8Bytes {
    let epoch = serde_json::to_string(&snap.epoch).unwrap_or_default();
    let pubs_len: usize = snap.pubs.iter().map(|p| p.len() + 1).sum();
    let mut out = String::with_capacity(80 + epoch.len() + pubs_len);
    let _ = write!(
        out,
        "{{\"id\":{id},\"ok\":{{\"epoch\":{epoch},\"offset\":{},\"pubs\":[",
        snap.offset
    );
    for (i, p) in snap.pubs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(p);
    }
    out.push(']');
    if let Some(recovered) = snap.recovered {
        let _ = write!(out, ",\"recovered\":{recovered}");
    }
    out.push_str("}}");
    Utf8Bytes::from(out)
}

/// Any push but a publication's (`join`, `leave`, `unsub`), through its `serde` type.
pub fn push_frame(push: &super::protocol::Push) -> Utf8Bytes {
    Utf8Bytes::from(serde_json::to_string(push).unwrap_or_default())
}

/// Any other reply, through its `serde` type.
pub fn reply<T: Serialize>(reply: &Reply<T>) -> Utf8Bytes {
    Utf8Bytes::from(serde_json::to_string(reply).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::protocol::{
        ErrorBody, ErrorCode, Outcome, Publication, Push, ServerFrame, StreamPosition,
    };
    use serde_json::json;

    fn read(text: &str) -> ServerFrame {
        serde_json::from_str(text).expect("valid server frame")
    }

    #[test]
    fn a_publication_reads_back_with_its_fields() {
        let e = publication("room:1", 5, &json!({"t":"hi \"x\""}), Some(12));
        let p: Publication = serde_json::from_str(&e).unwrap();
        assert_eq!(
            p,
            Publication {
                ch: "room:1".into(),
                offset: 5,
                data: json!({"t":"hi \"x\""}),
                from: Some(ClientInfo { client: "12".into() }),
            }
        );
        let api = publication("a", 1, &json!(null), None);
        assert_eq!(api.as_str(), r#"{"ch":"a","offset":1,"data":null}"#);
    }

    #[test]
    fn a_push_is_the_publication_with_push_pub() {
        let e = publication("a", 3, &json!([1, 2]), Some(4));
        let ServerFrame::Push(Push::Pub(p)) = read(&push(&e)) else {
            panic!("not a pub push");
        };
        assert_eq!(p.offset, 3);
        assert_eq!(p.data, json!([1, 2]));
        assert_eq!(p.from, Some(ClientInfo { client: "4".into() }));
    }

    #[test]
    fn a_snapshot_reply_splices_the_publications() {
        let pubs = vec![
            publication("a", 4, &json!("x"), None),
            publication("a", 5, &json!({"y":1}), Some(2)),
        ];
        let snap = Snapshot {
            epoch: "ep".to_string(),
            offset: 5,
            pubs,
            recovered: Some(true),
        };
        let ServerFrame::Reply(r) = read(&snapshot_reply(9, &snap)) else {
            panic!("not a reply");
        };
        assert_eq!(r.id, Some(9));
        let Outcome::Ok(body) = r.outcome else {
            panic!("not ok");
        };
        let back: Snapshot = serde_json::from_value(body).unwrap();
        assert_eq!(back.epoch, "ep");
        assert_eq!(back.offset, 5);
        assert_eq!(back.recovered, Some(true));
        assert_eq!(back.pubs.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![4, 5]);
        assert_eq!(back.pubs[1].data, json!({"y":1}));
    }

    #[test]
    fn an_empty_snapshot_without_recovered_has_no_such_field() {
        let snap = Snapshot {
            epoch: "ep".to_string(),
            offset: 0,
            pubs: vec![],
            recovered: None,
        };
        let v: Value = serde_json::from_str(&snapshot_reply(1, &snap)).unwrap();
        assert_eq!(v, json!({"id":1,"ok":{"epoch":"ep","offset":0,"pubs":[]}}));
    }

    #[test]
    fn other_replies_use_the_protocol_types() {
        let ok = reply(&Reply::ok(
            2,
            StreamPosition {
                epoch: "e".into(),
                offset: 1,
            },
        ));
        let v: Value = serde_json::from_str(&ok).unwrap();
        assert_eq!(v, json!({"id":2,"ok":{"epoch":"e","offset":1}}));
        let err = reply(&Reply::<()>::err(
            None,
            ErrorBody::new(ErrorCode::BadRequest, "m"),
        ));
        let v: Value = serde_json::from_str(&err).unwrap();
        assert_eq!(v, json!({"err":{"code":1,"msg":"m"}}));
    }
}
