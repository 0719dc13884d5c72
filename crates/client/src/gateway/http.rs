//! `GET /gateway/bot`: the gateway URL, the recommended shard count and the session
//! start limit, from Discord (`https://discord.com/api/v10`) or nimbus (`http://host:port`).
//!
//! A minimal HTTP/1.1 client (one request per connection, `Connection: close`, chunked
//! bodies understood) over TCP, or TLS with the webpki roots for `https://`.

use std::sync::Arc;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::GatewayError;

/// The `session_start_limit` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct SessionStartLimit {
    /// Identifies allowed per reset period.
    pub total: u64,
    /// Identifies left.
    pub remaining: u64,
    /// Milliseconds until `remaining` resets.
    pub reset_after: u64,
    /// Identify buckets.
    pub max_concurrency: u64,
}

/// The `GET /gateway/bot` response.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GatewayBot {
    /// Where to connect (cache it for Identifies).
    pub url: String,
    /// Recommended shard count.
    pub shards: u64,
    /// Identify limits.
    pub session_start_limit: SessionStartLimit,
}

fn http_err(e: impl std::fmt::Display) -> GatewayError {
    GatewayError::Http(e.to_string())
}

/// Fetch `{api_base}/gateway/bot` with `Authorization: Bot TOKEN` (`token` with or without
/// the prefix). `api_base` is e.g. `https://discord.com/api/v10` or `http://127.0.0.1:9080`.
pub async fn fetch_gateway_bot(api_base: &str, token: &str) -> Result<GatewayBot, GatewayError> {
    let base = url::Url::parse(api_base).map_err(|_| GatewayError::BadUrl(api_base.into()))?;
    let host = base
        .host_str()
        .ok_or_else(|| GatewayError::BadUrl(api_base.into()))?
        .to_owned();
    let tls = match base.scheme() {
        "https" => true,
        "http" => false,
        _ => return Err(GatewayError::BadUrl(api_base.into())),
    };
    let port = base
        .port_or_known_default()
        .unwrap_or(if tls { 443 } else { 80 });
    let path = format!("{}/gateway/bot", base.path().trim_end_matches('/'));
    let token = nimbus_proto::gateway::strip_bot_prefix(token);
    let host_header = match base.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nAuthorization: Bot {token}\r\nUser-Agent: DiscordBot (nimbus, 0.1)\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(http_err)?;
    let raw = if tls {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(http_err)?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(http_err)?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(http_err)?;
        exchange(stream, &request).await?
    } else {
        exchange(tcp, &request).await?
    };
    parse_response(&raw)
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    request: &str,
) -> Result<Vec<u8>, GatewayError> {
    s.write_all(request.as_bytes()).await.map_err(http_err)?;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .map_err(|_| GatewayError::Http("timed out".into()))?;
    // A TLS peer that closes without close_notify still gave us the whole body.
    if let Err(e) = read {
        if buf.is_empty() {
            return Err(http_err(e));
        }
    }
    Ok(buf)
}

fn parse_response(raw: &[u8]) -> Result<GatewayBot, GatewayError> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| GatewayError::Http("no HTTP header".into()))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| GatewayError::Http("bad status line".into()))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    if status != 200 {
        return Err(GatewayError::Http(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    serde_json::from_slice(&body).map_err(http_err)
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, GatewayError> {
    let mut out = Vec::new();
    loop {
        let line_end = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| GatewayError::Http("bad chunk".into()))?;
        let size_text = String::from_utf8_lossy(&b[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(http_err)?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size {
            return Err(GatewayError::Http("truncated chunk".into()));
        }
        out.extend_from_slice(&b[..size]);
        b = b.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"{"url":"wss://gateway.discord.gg","shards":9,"session_start_limit":{"total":1000,"remaining":999,"reset_after":14400000,"max_concurrency":1}}"#;

    #[test]
    fn plain_and_chunked_bodies() {
        let plain = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{BODY}");
        let bot = parse_response(plain.as_bytes()).expect("plain");
        assert_eq!(bot.shards, 9);
        assert_eq!(bot.session_start_limit.reset_after, 14_400_000);
        let (a, b) = BODY.split_at(20);
        let chunked = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        );
        assert_eq!(parse_response(chunked.as_bytes()).expect("chunked"), bot);
        let denied = "HTTP/1.1 401 Unauthorized\r\n\r\n{\"message\":\"401: Unauthorized\"}";
        assert!(
            matches!(parse_response(denied.as_bytes()), Err(GatewayError::Http(m)) if m.contains("401"))
        );
    }
}
