//! The demo page and `wshub.js` in a real headless Chromium, driven over WebDriver
//! (`support/browser.rs`). Needs Debian's `chromium` and `chromium-driver`; without
//! them each test fails with an install hint, or prints that it skipped when
//! `WSHUB_SKIP_BROWSER=1`.

#[path = "support/browser.rs"]
mod browser;
mod support;

use std::time::Duration;

use browser::{artifacts_dir, browser_or_skip, check_not_blank};
use support::{start, test_config, watchdog};

#[test]
fn a_headless_browser_loads_the_demo_page_and_its_screenshot_is_not_blank() {
    watchdog(Duration::from_secs(120), || {
        let Some(browser) = browser_or_skip("browser smoke test") else {
            return;
        };
        let server = start(test_config());
        browser.goto(&format!("http://{}/?ch=smoke", server.local_addr()));
        let title = browser.exec("return document.title", serde_json::json!([]));
        assert_eq!(title, "wshub demo chat");
        let channel = browser.exec(
            "return document.getElementById('channel').textContent",
            serde_json::json!([]),
        );
        assert_eq!(channel, "smoke");
        let loaded = browser.exec("return typeof window.Wshub", serde_json::json!([]));
        assert_eq!(loaded, "object", "wshub.js did not load");
        let png = browser.screenshot();
        let path = artifacts_dir().join("smoke.png");
        std::fs::write(&path, &png).unwrap();
        check_not_blank(&png);
    });
}
