//! A connection thread that has ended gives its stack back: a burst of connections that
//! has left does not keep one stack mapping (and one guard page) per connection. A thread
//! that has exited but was never joined keeps both, so this would fail if the server kept
//! the handles of ended threads until some later event (more connections, the drain).
//! Alone in this test binary, so that no other test's threads map or free stacks.

mod support;

use std::time::Duration;

use support::*;
use tungstenite::Message;

/// Connections open at once in the burst.
const BURST: usize = 300;

/// Lines in this process's memory map: one per mapping.
fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .map(|m| m.lines().count())
        .unwrap_or(0)
}

#[test]
fn a_burst_of_connections_that_has_left_leaves_no_stacks_mapped() {
    watchdog(Duration::from_secs(120), || {
        let mut config = test_config();
        // glibc keeps up to 40 MiB of freed thread stacks for reuse (its stack cache):
        // with 1 MiB stacks that is 40 stacks, 80 mappings, far below the burst's 600.
        config.thread_stack_size = 1024 * 1024;
        let server = start(config);
        let addr = server.local_addr();
        let threads_before = thread_count();
        let maps_before = mappings();

        // All open at once, so no connection thread has ended while the others arrive.
        let mut clients: Vec<Client> = (0..BURST).map(|_| connect(addr, "/echo")).collect();
        for ws in &mut clients {
            ws.send(Message::text("hi")).unwrap();
            assert_eq!(next_data(ws), Message::text("hi"));
        }
        assert_eq!(server.connections(), BURST);
        let maps_open = mappings();
        for mut ws in clients {
            ws.close(None).unwrap();
            while ws.read().is_ok() {}
        }
        assert_eq!(
            wait_for_count(0, Duration::from_secs(20), || server.connections()),
            0
        );
        assert_eq!(
            wait_for_threads(threads_before, Duration::from_secs(20)),
            threads_before
        );

        let maps_after = mappings();
        eprintln!("mappings: {maps_before} before, {maps_open} with {BURST} open, {maps_after} after");
        assert!(
            maps_open >= maps_before + BURST,
            "the burst should map a stack per connection: {maps_before} -> {maps_open}"
        );
        assert!(
            maps_after < maps_before + 200,
            "ended connection threads still hold their stacks: {maps_before} mappings before \
             the burst, {maps_after} after it left"
        );
        server.shutdown();
    });
}
