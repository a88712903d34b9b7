//! The plain-HTTP resources a connection thread answers before (instead of) an upgrade:
//! the demo page `GET /`, the browser client `GET /wshub.js`, `GET /metrics`, and the
//! publish API `POST /api/publish`.
//!
//! **Owns** nothing and spawns nothing: it runs on the reader thread of the connection
//! that asked, inside the handshake phase, so the handshake deadline bounds it (a body
//! is read under the same deadline as the head). The page and the script are compiled
//! into the binary (`include_str!` of `web/`), so a server needs no files at run time.

use std::time::Duration;

use crate::server::config::Config;
use crate::server::connection::Shared;
use crate::ws::handshake::{Content, Resource, Status, response};

/// How long a scrape waits for the hub's channel sizes before leaving them out: the
/// hub answers between two messages, so only a hub that is stopping or swamped is
/// slower.
const HUB_STATS_WAIT: Duration = Duration::from_secs(1);

/// The demo page: a small chat on a channel named in its query (`?ch=`).
const DEMO_PAGE: &str = include_str!("../../web/index.html");

/// The browser client for protocol v1.
const CLIENT_SCRIPT: &str = include_str!("../../web/wshub.js");

/// Which resource `path` is, given what `config` turns on; `None`: nothing here.
pub(crate) fn resource(config: &Config, path: &str) -> Option<Resource> {
    match path {
        "/" if config.demo => Some(Resource::Demo),
        "/wshub.js" => Some(Resource::Script),
        "/metrics" if config.metrics => Some(Resource::Metrics),
        "/api/publish" if config.api_key.is_some() => Some(Resource::Publish),
        _ => None,
    }
}

/// The complete response for a `GET` or `HEAD` of a static resource or the metrics.
pub(crate) fn get(resource: Resource, head: bool, shared: &Shared) -> Vec<u8> {
    match resource {
        Resource::Demo => response(
            Status::Ok,
            "",
            &Content {
                content_type: "text/html; charset=utf-8",
                // Revalidate every time: the page is small and must match its script.
                cache_control: "no-cache",
                body: DEMO_PAGE.as_bytes(),
            },
            head,
        ),
        Resource::Script => response(
            Status::Ok,
            "",
            &Content {
                content_type: "text/javascript; charset=utf-8",
                cache_control: "no-cache",
                body: CLIENT_SCRIPT.as_bytes(),
            },
            head,
        ),
        Resource::Metrics => {
            let stats = shared.hub.stats(HUB_STATS_WAIT);
            let text = shared.metrics.render(shared.hub.inbox_depth(), stats);
            response(
                Status::Ok,
                "",
                &Content {
                    content_type: crate::server::metrics::CONTENT_TYPE,
                    cache_control: "no-store",
                    body: text.as_bytes(),
                },
                head,
            )
        }
        Resource::Publish => response(Status::NotFound, "", &Content::text(b"not here\n"), head),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_follows_its_flag_and_the_script_is_always_there() {
        let mut config = Config::default();
        assert_eq!(resource(&config, "/"), Some(Resource::Demo));
        config.demo = false;
        assert_eq!(resource(&config, "/"), None);
        assert_eq!(resource(&config, "/wshub.js"), Some(Resource::Script));
    }

    #[test]
    fn the_publish_api_exists_only_with_a_key() {
        let mut config = Config::default();
        assert_eq!(resource(&config, "/api/publish"), None);
        config.api_key = Some("k".into());
        assert_eq!(resource(&config, "/api/publish"), Some(Resource::Publish));
    }

    #[test]
    fn metrics_follow_their_flag() {
        let mut config = Config::default();
        assert_eq!(resource(&config, "/metrics"), Some(Resource::Metrics));
        config.metrics = false;
        assert_eq!(resource(&config, "/metrics"), None);
    }
}
