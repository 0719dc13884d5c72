//! Cloud history in Scratch's clouddata log format: `GET /logs?projectid=ID&limit=N&offset=M`
//! answers a JSON array of `{"user","verb","name","value","timestamp"}`, newest first
//! (`docs/integrations.md`, History). Entries come from the core's
//! [`HistoryLog`] (the store on one node, Redis with `--redis`); who may read is who may
//! read the room through the HTTP API (`Auth::api`, as `http::api_access` checks it).
//!
//! Settings ([`HistorySettings`]): `--history-max-entries` and `--history-max-age-s`,
//! resolved into a [`Retention`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use nimbus_core::history::{
    to_scratch_json, HistoryLog, Retention, DEFAULT_LIMIT, MAX_LIMIT, MAX_OFFSET,
};
use serde::Deserialize;

use crate::auth::Auth;
use crate::reply::json_error;
use crate::setting::InvalidSetting;

/// Most entries a room may be configured to keep.
pub const MAX_ENTRIES: usize = 1_000_000;

/// The history settings, each optional so that flags, environment and file can be layered.
#[derive(Debug, Default, Clone, clap::Args, Deserialize, merge::Merge)]
#[serde(rename_all = "snake_case")]
#[merge(strategy = merge::option::overwrite_none)]
pub struct HistorySettings {
    /// Cloud history entries kept per room for `GET /logs`, e.g. 1000 (0: no history; it costs
    /// a store row per change) [default: 0].
    #[arg(long, env = "NIMBUS_HISTORY_MAX_ENTRIES")]
    pub history_max_entries: Option<usize>,
    /// Oldest cloud history entry kept, in seconds [default: 604800].
    #[arg(long, env = "NIMBUS_HISTORY_MAX_AGE_S")]
    pub history_max_age_s: Option<u64>,
}

impl HistorySettings {
    /// Fill in defaults and check ranges.
    pub fn retention(&self) -> Result<Retention, InvalidSetting> {
        let d = Retention::default();
        let max_entries = self.history_max_entries.unwrap_or(d.max_entries);
        if max_entries > MAX_ENTRIES {
            return Err(InvalidSetting {
                key: "history_max_entries",
                reason: format!("at most {MAX_ENTRIES}"),
            });
        }
        let max_age = self
            .history_max_age_s
            .map_or(d.max_age, Duration::from_secs);
        if max_age.is_zero() {
            return Err(InvalidSetting {
                key: "history_max_age_s",
                reason: "must be positive".into(),
            });
        }
        Ok(Retention {
            max_entries,
            max_age,
        })
    }
}

/// What `GET /logs` reads with.
#[derive(Debug, Clone)]
pub(crate) struct RouteState {
    /// The rooms' history.
    pub history: Arc<dyn HistoryLog>,
    /// Who may read (the HTTP API's rules).
    pub auth: Arc<Auth>,
}

/// History reads running at once (each a store job, or a Redis read); more wait.
static READS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// `GET /logs`.
pub(crate) fn routes(state: RouteState) -> Router {
    Router::new().route("/logs", get(logs)).with_state(state)
}

/// The query of `GET /logs`.
#[derive(Debug, PartialEq, Eq)]
struct Query {
    project: String,
    limit: usize,
    offset: usize,
}

/// Parse `projectid=ID&limit=N&offset=M` (limit default 100, at most 1000; offset at most
/// 100,000).
fn parse_query(q: Option<&str>) -> Result<Query, String> {
    let mut project = None;
    let mut limit = DEFAULT_LIMIT;
    let mut offset = 0usize;
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let number = |what: &str| {
            v.parse::<usize>()
                .map_err(|_| format!("{what} must be a non-negative integer"))
        };
        match k {
            "projectid" => {
                let id = percent_decode(v).ok_or("projectid is not valid UTF-8")?;
                project = Some(id);
            }
            "limit" => limit = number("limit")?,
            "offset" => offset = number("offset")?,
            _ => {}
        }
    }
    let project = project
        .filter(|p| !p.is_empty())
        .ok_or("projectid is required")?;
    nimbus_proto::cloud::check_project_id(&project)?;
    if limit > MAX_LIMIT {
        return Err(format!("limit is at most {MAX_LIMIT}"));
    }
    if offset > MAX_OFFSET {
        return Err(format!("offset is at most {MAX_OFFSET}"));
    }
    Ok(Query {
        project,
        limit,
        offset,
    })
}

/// `%XX` and `+` decoding of a query value.
fn percent_decode(v: &str) -> Option<String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

async fn logs(State(app): State<RouteState>, parts: Parts) -> Response {
    let q = match parse_query(parts.uri.query()) {
        Ok(q) => q,
        Err(why) => return json_error(StatusCode::BAD_REQUEST, &why),
    };
    // The read API's check.
    if let Err(r) = app.auth.check_api(&parts, &q.project, false) {
        return json_error(r.status, r.reason);
    }
    // At most READS at once, each in its own task holding its permit to the end: a reader
    // that hangs up does not leave store work queued unbounded.
    let permit = READS.acquire().await;
    let (history, project) = (app.history.clone(), q.project.clone());
    let reading = tokio::spawn(async move {
        let _permit = permit;
        history.read(&project, q.limit, q.offset).await
    });
    let read = match reading.await {
        Ok(read) => read,
        Err(e) => {
            tracing::error!(room = %q.project, error = %e, "history read task failed");
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, "history read failed");
        }
    };
    match read {
        Ok(entries) => (
            [(header::CONTENT_TYPE, "application/json")],
            to_scratch_json(&entries),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(room = %q.project, error = %e, "history read failed");
            json_error(StatusCode::SERVICE_UNAVAILABLE, "history unavailable")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_takes_scratchs_parameters_with_defaults_and_bounds() {
        let q = parse_query(Some("projectid=123&limit=10&offset=5")).expect("valid");
        assert_eq!(
            q,
            Query {
                project: "123".into(),
                limit: 10,
                offset: 5
            }
        );
        let q = parse_query(Some("projectid=a%20b+c")).expect("valid");
        assert_eq!((q.project.as_str(), q.limit, q.offset), ("a b c", 100, 0));
        assert!(parse_query(None).is_err());
        assert!(parse_query(Some("limit=5")).is_err());
        assert!(parse_query(Some("projectid=1&limit=1001")).is_err());
        assert!(parse_query(Some("projectid=1&limit=-1")).is_err());
        assert!(parse_query(Some("projectid=1&offset=100001")).is_err());
        assert!(parse_query(Some("projectid=1&offset=x")).is_err());
        assert!(parse_query(Some("projectid=%zz")).is_err());
        assert!(parse_query(Some("projectid=%4")).is_err());
    }

    #[test]
    fn retention_settings_have_defaults_and_bounds() {
        let r = HistorySettings::default().retention().expect("valid");
        assert_eq!(r, Retention::default());
        let s = HistorySettings {
            history_max_entries: Some(0),
            history_max_age_s: Some(60),
        };
        let r = s.retention().expect("valid");
        assert!(!r.enabled());
        assert_eq!(r.max_age, Duration::from_secs(60));
        let bad = HistorySettings {
            history_max_age_s: Some(0),
            ..HistorySettings::default()
        };
        assert_eq!(bad.retention().expect_err("zero").key, "history_max_age_s");
        let bad = HistorySettings {
            history_max_entries: Some(MAX_ENTRIES + 1),
            ..HistorySettings::default()
        };
        assert_eq!(bad.retention().expect_err("big").key, "history_max_entries");
    }
}
