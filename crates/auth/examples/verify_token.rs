//! Verify tokens read from stdin, one per line, and print one JSON object per line.
//!
//! ```text
//! cargo run -p nimbus-auth --example verify_token -- \
//!     --secret k1:SECRET --jwks jwks.json --room doc:notes/a --room gateway:x < tokens.txt
//! ```
//!
//! Options: `--secret KID:SECRET` or `--secret SECRET` (repeatable), `--jwks FILE`,
//! `--room CAP:ROOM` (repeatable: the access reported for each), `--leeway SECS`,
//! `--issuer ISS`, `--audience AUD`, `--now UNIX_SECS` (default: the clock).
//!
//! A valid token prints
//! `{"ok":true,"sub":"alice","exp":1767229200,"kid":"k1","intents":513,"access":{"doc:notes/a":"rw","gateway:x":null}}`,
//! a refused one `{"ok":false,"reason":"token_expired","error":"token expired"}`.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nimbus_auth::{AuthConfig, Capability, Hs256Secret, Verifier};
use serde_json::{json, Map, Value};

struct Args {
    config: AuthConfig,
    rooms: Vec<(Capability, String)>,
    now: Option<u64>,
}

fn parse_args() -> Result<Args, String> {
    let mut config = AuthConfig::default();
    let mut rooms = Vec::new();
    let mut now = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--secret" => config.hs256_secrets.push(value()?.parse::<Hs256Secret>()?),
            "--jwks" => config.jwks_file = Some(value()?.into()),
            "--room" => {
                let v = value()?;
                let (cap, room) = v
                    .split_once(':')
                    .ok_or_else(|| format!("--room {v:?} is not CAP:ROOM"))?;
                rooms.push((cap.parse()?, room.to_owned()));
            }
            "--leeway" => {
                let secs = value()?.parse().map_err(|e| format!("--leeway: {e}"))?;
                config.leeway = Duration::from_secs(secs);
            }
            "--issuer" => config.issuer = Some(value()?),
            "--audience" => config.audience = Some(value()?),
            "--now" => now = Some(value()?.parse().map_err(|e| format!("--now: {e}"))?),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(Args { config, rooms, now })
}

fn verdict(v: &Verifier, args: &Args, token: &str) -> Value {
    let now = args
        .now
        .map_or_else(SystemTime::now, |s| UNIX_EPOCH + Duration::from_secs(s));
    match v.verify(token, now) {
        Ok(id) => {
            let mut access = Map::new();
            for (cap, room) in &args.rooms {
                let mode = id.access(*cap, room).map(|m| m.as_str());
                access.insert(format!("{cap}:{room}"), json!(mode));
            }
            let exp = id
                .expires_at()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            json!({
                "ok": true,
                "sub": id.sub(),
                "exp": exp,
                "kid": id.key_id(),
                "intents": id.gateway_intents(),
                "access": access,
            })
        }
        Err(e) => json!({ "ok": false, "reason": e.reason(), "error": e.to_string() }),
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("verify_token: {e}");
            return ExitCode::from(2);
        }
    };
    let verifier = match Verifier::from_config(&args.config) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("verify_token: {e}");
            return ExitCode::from(2);
        }
    };
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("verify_token: stdin: {e}");
                return ExitCode::FAILURE;
            }
        };
        let v = verdict(&verifier, &args, line.trim());
        if writeln!(out, "{v}").and_then(|()| out.flush()).is_err() {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
