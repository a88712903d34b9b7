//! Identity and permissions on `/ws`: who a client is ([`Identity`]) and what it may do
//! ([`Authorizer`]), free of I/O.
//!
//! **Owns** nothing and spawns nothing: an [`Authorizer`] is shared (`Arc`) by every
//! `/ws` reader thread and called there, never on the hub thread, so a slow check (user
//! code may look things up) delays only the connection it is about. Nothing here wakes
//! by itself; time comes in as an argument ([`JwtAuthorizer::check_token_at`]).
//!
//! Two implementations ship: [`Open`] (the default: `hello` is optional and names the
//! user) and [`JwtAuthorizer`] (token mode: `hello` with an HS256 JWT must come first).
//! An embedding program writes its own and sets it with
//! [`ServerBuilder::authorizer`](crate::ServerBuilder::authorizer).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::protocol::{ErrorBody, ErrorCode, MAX_USER_LEN, validate_info};

/// Who a connection is, as its `hello` established (or the anonymous identity of an
/// open-mode connection that sent none).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Identity {
    /// The user; `""` when the client never said.
    pub user: String,
    /// The presence info (a JSON object of at most 1 KiB), when any.
    pub info: Option<Value>,
    /// Channel patterns this identity is limited to (`"room:*"` matches every channel
    /// starting with `room:`, any other pattern only itself); `None`: every channel.
    /// [`Authorizer::allow`]'s default checks them.
    pub channels: Option<Vec<String>>,
}

impl Identity {
    /// Whether `ch` matches one of this identity's channel patterns (always, without any).
    pub fn may_use(&self, ch: &str) -> bool {
        self.channels
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| pattern_matches(p, ch)))
    }
}

/// `"room:*"` matches every channel starting with `room:`; any other pattern only itself.
pub fn pattern_matches(pattern: &str, ch: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => ch.starts_with(prefix),
        None => pattern == ch,
    }
}

/// What a command wants to do with a channel, for [`Authorizer::allow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// `sub`: receive its publications (and, with `joins`, its joins and leaves).
    Subscribe,
    /// `pub`: publish to it.
    Publish,
    /// `history`: read its recent publications.
    History,
    /// `presence`: list who is subscribed.
    Presence,
}

/// A `hello` as the client sent it, for [`Authorizer::hello`].
#[derive(Debug, Clone, Copy)]
pub struct Hello<'a> {
    /// The connection's id.
    pub conn: u64,
    /// The token, when the client sent one.
    pub token: Option<&'a str>,
    /// The user name, when the client sent one.
    pub user: Option<&'a str>,
    /// The presence info, when the client sent one (already checked: an object of at
    /// most 1 KiB).
    pub info: Option<&'a Value>,
}

/// The hook that decides who a client is and what it may do.
///
/// Called on the connection's reader thread (never on the hub thread): on `hello`, and
/// before each `sub`, `pub`, `history` and `presence` is forwarded to the hub. It may
/// block briefly, which delays only that connection. An error is sent to the client as
/// the command's error reply; use [`ErrorCode::Unauthorized`] (7) for "who are you" and
/// [`ErrorCode::Forbidden`] (3) for "not you, not here".
pub trait Authorizer: Send + Sync + 'static {
    /// Whether a valid `hello` must come first (token mode). When it must, any other
    /// command before it gets error 7, a refused `hello` is followed by Close 4001, and
    /// a connection with no valid `hello` within the handshake timeout is closed with
    /// 4001. Default: `false` (open mode).
    fn requires_hello(&self) -> bool {
        false
    }

    /// Establishes the identity a `hello` claims, or refuses it. The error's message is
    /// sent to the client and logged, so it must not contain the token.
    fn hello(&self, hello: &Hello<'_>) -> Result<Identity, ErrorBody>;

    /// Whether `who` may do `action` on `ch`. Default: the identity's channel patterns
    /// ([`Identity::may_use`]), error 3 outside them.
    fn allow(&self, who: &Identity, action: Action, ch: &str) -> Result<(), ErrorBody> {
        let _ = action;
        if who.may_use(ch) {
            Ok(())
        } else {
            Err(ErrorBody::new(
                ErrorCode::Forbidden,
                format!("channel {ch} is outside this client's channels"),
            ))
        }
    }

    /// Whether `who` may list `ch`'s presence without being subscribed to it (after
    /// [`allow`](Self::allow) with [`Action::Presence`] said yes). Default: `false`,
    /// subscribers only.
    fn presence_without_subscription(&self, who: &Identity, ch: &str) -> bool {
        let _ = (who, ch);
        false
    }
}

/// Open mode, the default: `hello` is optional and its `user` (default `""`) and `info`
/// are taken as said; a `token` is ignored. Every channel is allowed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Open;

impl Authorizer for Open {
    fn hello(&self, hello: &Hello<'_>) -> Result<Identity, ErrorBody> {
        Ok(Identity {
            user: hello.user.unwrap_or_default().to_owned(),
            info: hello.info.cloned(),
            channels: None,
        })
    }
}

/// Token mode: `hello` must carry a JWT signed with HS256 by the server's secret.
///
/// Claims: `sub` (required) is the user; `exp` (seconds since the epoch), when present,
/// must be in the future (no leeway); `info`, when present, is the presence info (an
/// object of at most 1 KiB; it replaces the `hello`'s own); `channels`, when present, is
/// the list of channel patterns the client may use. A bad signature, an `alg` other than
/// HS256 (`none` included), a malformed token, an expired one or one without `sub` is
/// error 7.
#[derive(Clone)]
pub struct JwtAuthorizer {
    key: DecodingKey,
}

impl std::fmt::Debug for JwtAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtAuthorizer(<secret redacted>)")
    }
}

/// The claims a token carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The user.
    pub sub: String,
    /// Expiry, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Presence info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Value>,
    /// Channel patterns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
}

impl JwtAuthorizer {
    /// Checks tokens signed with `secret`.
    pub fn new(secret: &[u8]) -> JwtAuthorizer {
        JwtAuthorizer {
            key: DecodingKey::from_secret(secret),
        }
    }

    /// Checks `token` against the system clock; see [`check_token_at`](Self::check_token_at).
    pub fn check_token(&self, token: &str) -> Result<Identity, ErrorBody> {
        self.check_token_at(token, SystemTime::now())
    }

    /// Checks `token` as of `now` and returns the identity it carries; the error says
    /// why not (and never contains the token). A token with `exp` is expired from that
    /// second on (no leeway).
    pub fn check_token_at(&self, token: &str, now: SystemTime) -> Result<Identity, ErrorBody> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["sub"]);
        // `exp` is checked below against `now`, not the crate's own clock.
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &validation)
            .map_err(|e| unauthorized(token_error(e.kind())))?;
        let Claims {
            sub,
            exp,
            info,
            channels,
        } = data.claims;
        let now_secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if exp.is_some_and(|exp| now_secs >= exp) {
            return Err(unauthorized("token expired"));
        }
        if sub.len() > MAX_USER_LEN {
            return Err(unauthorized(format!("sub is longer than {MAX_USER_LEN} bytes")));
        }
        if let Some(info) = &info {
            validate_info(info).map_err(|e| unauthorized(format!("token info: {}", e.msg)))?;
        }
        Ok(Identity {
            user: sub,
            info,
            channels,
        })
    }
}

fn unauthorized(msg: impl Into<String>) -> ErrorBody {
    ErrorBody::new(ErrorCode::Unauthorized, msg)
}

/// Why a token was refused, in words that name the rule and never the token.
fn token_error(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::InvalidSignature => "token has a bad signature".into(),
        ErrorKind::InvalidAlgorithm => "token alg is not HS256".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("token has no {c} claim"),
        ErrorKind::InvalidClaimFormat(c) => format!("token claim {c} has the wrong type"),
        // `alg` values the crate does not know (`none` among them) fail the header's
        // decoding as an unknown variant.
        ErrorKind::Json(e) if e.to_string().contains("unknown variant") => "token alg is not HS256".into(),
        ErrorKind::Json(e) => format!("malformed token (JSON: {e})"),
        _ => "malformed token".into(),
    }
}

impl Authorizer for JwtAuthorizer {
    fn requires_hello(&self) -> bool {
        true
    }

    fn hello(&self, hello: &Hello<'_>) -> Result<Identity, ErrorBody> {
        let token = hello.token.ok_or_else(|| unauthorized("hello needs a token"))?;
        let mut who = self.check_token(token)?;
        if who.info.is_none() {
            who.info = hello.info.cloned();
        }
        Ok(who)
    }
}

/// Makes a token for `user`, signed with HS256 by `secret`, limited to `channels` when
/// given, expiring `ttl` after `now` when given. What `wshub token` prints.
pub fn issue_token(
    secret: &[u8],
    user: &str,
    channels: Option<Vec<String>>,
    info: Option<Value>,
    ttl: Option<Duration>,
    now: SystemTime,
) -> String {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let claims = Claims {
        sub: user.to_owned(),
        exp: ttl.map(|ttl| (since_epoch + ttl).as_secs()),
        info,
        channels,
    };
    // HS256 with a byte secret cannot fail to sign.
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"s3cret";

    fn now() -> SystemTime {
        SystemTime::now()
    }

    fn check(token: &str) -> Result<Identity, ErrorBody> {
        JwtAuthorizer::new(SECRET).check_token(token)
    }

    /// A token of `claims` signed with the secret by `alg`.
    fn signed(alg: Algorithm, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    #[test]
    fn a_valid_token_gives_its_user_info_and_channels() {
        let t = issue_token(
            SECRET,
            "ann",
            Some(vec!["room:*".into()]),
            Some(json!({"name":"Ann"})),
            Some(Duration::from_secs(60)),
            now(),
        );
        let who = check(&t).unwrap();
        assert_eq!(who.user, "ann");
        assert_eq!(who.info, Some(json!({"name":"Ann"})));
        assert!(who.may_use("room:1"));
        assert!(!who.may_use("lobby"));
    }

    #[test]
    fn a_token_expires_at_its_exp_second() {
        let issued = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t = issue_token(SECRET, "ann", None, None, Some(Duration::from_secs(60)), issued);
        let a = JwtAuthorizer::new(SECRET);
        assert!(a.check_token_at(&t, issued + Duration::from_secs(59)).is_ok());
        let e = a
            .check_token_at(&t, issued + Duration::from_secs(60))
            .unwrap_err();
        assert!(e.msg.contains("expired"), "{}", e.msg);
    }

    #[test]
    fn an_expired_token_is_error_7_saying_expired() {
        let t = issue_token(
            SECRET,
            "ann",
            None,
            None,
            Some(Duration::from_secs(60)),
            now() - Duration::from_secs(3600),
        );
        let e = check(&t).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized);
        assert!(e.msg.contains("expired"), "{}", e.msg);
    }

    #[test]
    fn a_wrong_signature_is_error_7_and_the_message_does_not_hold_the_token() {
        let t = issue_token(b"other", "ann", None, None, None, now());
        let e = check(&t).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized);
        assert!(e.msg.contains("signature"), "{}", e.msg);
        assert!(!e.msg.contains(&t));
    }

    #[test]
    fn alg_none_and_other_algs_are_refused() {
        // {"alg":"none","typ":"JWT"} . {"sub":"ann"} . (no signature)
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbm4ifQ.";
        let e = check(none).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized);
        assert!(e.msg.contains("alg"), "{}", e.msg);
        let hs384 = signed(Algorithm::HS384, &json!({"sub":"ann"}));
        assert!(check(&hs384).unwrap_err().msg.contains("alg"));
    }

    #[test]
    fn malformed_tokens_and_missing_sub_are_error_7() {
        for bad in ["", "abc", "a.b.c", "...."] {
            assert_eq!(check(bad).unwrap_err().code, ErrorCode::Unauthorized, "{bad:?}");
        }
        let no_sub = signed(Algorithm::HS256, &json!({"name":"ann"}));
        assert!(check(&no_sub).unwrap_err().msg.contains("sub"));
    }

    #[test]
    fn info_over_1_kib_in_a_token_is_refused() {
        let big = json!({"x": "y".repeat(2000)});
        let t = issue_token(SECRET, "ann", None, Some(big), None, now());
        assert_eq!(check(&t).unwrap_err().code, ErrorCode::Unauthorized);
    }

    #[test]
    fn a_sub_of_up_to_255_bytes_is_the_user_and_a_longer_one_is_error_7() {
        let longest = "u".repeat(MAX_USER_LEN);
        let t = issue_token(SECRET, &longest, None, None, None, now());
        assert_eq!(check(&t).unwrap().user, longest);
        let t = issue_token(SECRET, &"u".repeat(MAX_USER_LEN + 1), None, None, None, now());
        let e = check(&t).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized);
        assert!(e.msg.contains("sub is longer than 255 bytes"), "{}", e.msg);
    }

    #[test]
    fn a_jwt_authorizer_s_debug_form_names_it_and_hides_the_secret() {
        let shown = format!("{:?}", JwtAuthorizer::new(SECRET));
        assert_eq!(shown, "JwtAuthorizer(<secret redacted>)");
    }

    #[test]
    fn patterns_are_prefixes_with_a_star_else_exact() {
        assert!(pattern_matches("room:*", "room:"));
        assert!(pattern_matches("room:*", "room:42"));
        assert!(!pattern_matches("room:*", "roo"));
        assert!(pattern_matches("lobby", "lobby"));
        assert!(!pattern_matches("lobby", "lobby2"));
        assert!(pattern_matches("*", "anything"));
    }

    #[test]
    fn open_mode_takes_the_user_as_said_and_allows_every_channel() {
        let info = json!({"a":1});
        let who = Open
            .hello(&Hello {
                conn: 1,
                token: None,
                user: Some("bob"),
                info: Some(&info),
            })
            .unwrap();
        assert_eq!(who.user, "bob");
        assert!(Open.allow(&who, Action::Publish, "x").is_ok());
        assert!(!Open.requires_hello());
    }

    #[test]
    fn the_default_allow_is_error_3_outside_the_patterns() {
        let who = Identity {
            channels: Some(vec!["a".into()]),
            ..Identity::default()
        };
        assert!(Open.allow(&who, Action::Subscribe, "a").is_ok());
        let e = Open.allow(&who, Action::Subscribe, "b").unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
    }
}
