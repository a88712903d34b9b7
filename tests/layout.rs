//! The tree's layering rule, checked so that nobody has to remember it: the WebSocket
//! rules under `src/ws/` and the channel core under `src/pubsub/` are I/O-free. They may
//! not reach for sockets, channels or the server's threads; those depend on the rules,
//! never the other way round.

use std::fs;
use std::path::{Path, PathBuf};

/// What no file under `src/ws/` or `src/pubsub/` may name outside its comments.
const FORBIDDEN: &[&str] = &[
    "std::net",
    "crossbeam_channel",
    "crate::server",
    "std::thread",
    "super::super",
];

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).expect("read src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The code of a file with its line comments (`//`, `///`, `//!`) taken out.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let code = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        (!code.trim().is_empty()).then_some((i + 1, code))
    })
}

/// Every use of a forbidden word in the code (not the comments) of the files under
/// `src/{dir}`, which must hold at least `min_files` files.
fn violations(dir: &str, min_files: usize, forbidden: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
    let files = rust_files(&root);
    assert!(
        files.len() >= min_files,
        "src/{dir}/ should hold more, found {files:?}"
    );
    let mut broken = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).expect("read source");
        for (line_no, code) in code_lines(&text) {
            for word in forbidden {
                if code.contains(word) {
                    broken.push(format!("{}:{line_no}: uses {word}", file.display()));
                }
            }
        }
    }
    broken
}

#[test]
fn ws_rules_import_no_sockets_channels_or_server_code() {
    let broken = violations("ws", 6, FORBIDDEN);
    assert!(
        broken.is_empty(),
        "src/ws/ must stay I/O-free:\n{}",
        broken.join("\n")
    );
}

#[test]
fn pubsub_core_imports_no_sockets_channels_server_code_or_locks() {
    // The hub owns the channel state: nothing in it may need a lock.
    let words: Vec<&str> = FORBIDDEN.iter().copied().chain(["Mutex", "RwLock"]).collect();
    let broken = violations("pubsub", 5, &words);
    assert!(
        broken.is_empty(),
        "src/pubsub/ must stay I/O-free and lock-free:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_checker_sees_a_forbidden_import() {
    // The rule above must be able to fail: a planted import is found, a comment is not.
    let planted = "//! talks about std::net in prose\nuse std::net::TcpStream;\n";
    let hits: Vec<_> = code_lines(planted)
        .filter(|(_, code)| code.contains("std::net"))
        .collect();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].0, 2);
}
