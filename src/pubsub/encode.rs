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

use serde::Serialize;
use serde_json::Value;
use tungstenite::Bytes;

use crate::pubsub::protocol::{ClientInfo, Reply, Snapshot};

/// One publication in its `pubs` form, encoded: a JSON object starting with `{"ch":`.
pub type Encoded = Bytes;

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
    let p = PubRef {
        ch,
        offset,
        data,
        from: from.map(|id| ClientInfo {
            client: id.to_string(),
        }),
    };
    // Serialising borrowed strings, integers and a `Value` cannot fail.
    Bytes::from(serde_json::to_vec(&p).unwrap_or_default())
}

/// The push of an encoded publication: `{"push":"pub",` then the publication's fields.
pub fn push(publication: &Encoded) -> Bytes {
    const HEAD: &[u8] = b"{\"push\":\"pub\",";
    let mut out = Vec::with_capacity(HEAD.len() + publication.len());
    out.extend_from_slice(HEAD);
    // The encoded form always starts with `{`; its fields follow it.
    out.extend_from_slice(publication.get(1..).unwrap_or_default());
    Bytes::from(out)
}

/// The ok reply to a `sub` or `history`: `{"id":N,"ok":{"epoch":..,"offset":..,
/// "pubs":[..]}}`, with `"recovered"` when the snapshot has it.
pub fn snapshot_reply(id: u64, snap: &Snapshot<Encoded>) -> Bytes {
    let epoch = serde_json::to_string(&snap.epoch).unwrap_or_default();
    let pubs_len: usize = snap.pubs.iter().map(|p| p.len() + 1).sum();
    let mut out = Vec::with_capacity(80 + epoch.len() + pubs_len);
    out.extend_from_slice(
        format!(
            "{{\"id\":{id},\"ok\":{{\"epoch\":{epoch},\"offset\":{},\"pubs\":[",
            snap.offset
        )
        .as_bytes(),
    );
    for (i, p) in snap.pubs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(p);
    }
    out.push(b']');
    if let Some(recovered) = snap.recovered {
        out.extend_from_slice(format!(",\"recovered\":{recovered}").as_bytes());
    }
    out.extend_from_slice(b"}}");
    Bytes::from(out)
}

/// Any other reply, through its `serde` type.
pub fn reply<T: Serialize>(reply: &Reply<T>) -> Bytes {
    Bytes::from(serde_json::to_vec(reply).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::protocol::{
        ErrorBody, ErrorCode, Outcome, Publication, Push, ServerFrame, StreamPosition,
    };
    use serde_json::json;

    fn read(bytes: &[u8]) -> ServerFrame {
        serde_json::from_slice(bytes).expect("valid server frame")
    }

    #[test]
    fn a_publication_reads_back_with_its_fields() {
        let e = publication("room:1", 5, &json!({"t":"hi \"x\""}), Some(12));
        let p: Publication = serde_json::from_slice(&e).unwrap();
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
        assert_eq!(
            std::str::from_utf8(&api).unwrap(),
            r#"{"ch":"a","offset":1,"data":null}"#
        );
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
        let v: Value = serde_json::from_slice(&snapshot_reply(1, &snap)).unwrap();
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
        let v: Value = serde_json::from_slice(&ok).unwrap();
        assert_eq!(v, json!({"id":2,"ok":{"epoch":"e","offset":1}}));
        let err = reply(&Reply::<()>::err(
            None,
            ErrorBody::new(ErrorCode::BadRequest, "m"),
        ));
        let v: Value = serde_json::from_slice(&err).unwrap();
        assert_eq!(v, json!({"err":{"code":1,"msg":"m"}}));
    }
}
