//! `nimbus serve`'s log on stderr: plain text without colour codes when stderr is not a
//! terminal, one JSON object per line with `--log-format json`.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// The first stderr lines of a server started with `extra`, until it says it listens.
fn first_lines(extra: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_nimbus"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path())
        .args(extra)
        .env("NIMBUS_LOG", "info")
        .env_remove("NIMBUS_LOG_FORMAT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        let done = line.contains("nimbus listening on");
        lines.push(line);
        if done || lines.len() > 200 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

#[test]
fn a_log_to_a_pipe_has_no_colour_codes() {
    let lines = first_lines(&[]);
    assert!(
        lines.iter().any(|l| l.contains("nimbus listening on")),
        "{lines:?}"
    );
    for line in &lines {
        assert!(!line.contains('\u{1b}'), "escape code in {line:?}");
    }
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    let lines = first_lines(&["--log-format", "json"]);
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["timestamp"].is_string(), "{line}");
        assert!(v["fields"].is_object(), "{line}");
    }
    let listening = lines.last().unwrap();
    assert!(
        listening.contains("nimbus listening on"),
        "the last line read is the listening one: {listening}"
    );
}
