//! A small HTTP/1.1 client for plugins: one request per connection, plain `http://` only,
//! bounded in every dimension (header and body sizes; the caller bounds the time).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The parts of an `http://` URL the client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
}

const MAX_HEAD_BYTES: usize = 64 * 1024;

pub fn parse_url(url: &str) -> Result<Url, HttpError> {
    let invalid = |why: &str| HttpError::Invalid(format!("{url:?}: {why}"));
    let rest = if let Some(rest) = url.strip_prefix("http://") {
        rest
    } else if url.starts_with("https://") {
        return Err(invalid("https is not supported by this host version"));
    } else {
        return Err(invalid("the URL must start with http://"));
    };
    let (authority, target) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.contains('@') {
        return Err(invalid("credentials in the URL are not supported"));
    }
    let (host, port) = match super::spec::split_host_port(authority) {
        Some((h, p)) => (h.to_string(), p),
        None if !authority.is_empty() && !authority.contains(':') => (authority.to_string(), 80),
        None => return Err(invalid("bad host or port")),
    };
    if target.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(invalid("control characters or spaces in the path"));
    }
    Ok(Url { host, port, target })
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

fn token_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Sends one request and reads the whole response. No timeout here: the caller races it.
pub async fn send(
    url: &Url,
    method: &str,
    headers: &[(String, String)],
    body: Option<&[u8]>,
    max_body: usize,
) -> Result<Response, HttpError> {
    if !token_ok(method) {
        return Err(HttpError::Invalid(format!("method {method:?}")));
    }
    let mut head = format!("{method} {} HTTP/1.1\r\nHost: {}", url.target, url.host);
    if url.port != 80 {
        head.push_str(&format!(":{}", url.port));
    }
    head.push_str("\r\nConnection: close\r\n");
    for (name, value) in headers {
        if !token_ok(name) || value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(HttpError::Invalid(format!("header {name:?}")));
        }
        let lower = name.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "host" | "connection" | "content-length" | "transfer-encoding"
        ) {
            return Err(HttpError::Invalid(format!(
                "header {name:?} is set by the host"
            )));
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");

    let host = url.host.trim_start_matches('[').trim_end_matches(']');
    let mut stream = TcpStream::connect((host, url.port))
        .await
        .map_err(|e| HttpError::Failed(format!("connect to {}:{}: {e}", url.host, url.port)))?;
    let io = |e: std::io::Error| HttpError::Failed(format!("{}:{}: {e}", url.host, url.port));
    stream.write_all(head.as_bytes()).await.map_err(io)?;
    if let Some(body) = body {
        stream.write_all(body).await.map_err(io)?;
    }
    stream.flush().await.map_err(io)?;

    // The head, up to the blank line.
    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(HttpError::Failed("response head over 64 KiB".into()));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            return Err(HttpError::Failed(
                "connection closed before the response head".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head_text = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| HttpError::Failed("response head is not UTF-8".into()))?;
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = parse_status(status_line)
        .ok_or_else(|| HttpError::Failed(format!("bad status line {status_line:?}")))?;
    let mut response_headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| HttpError::Failed(format!("bad header line {line:?}")))?;
        response_headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let header = |name: &str| {
        response_headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let chunked =
        header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let length = match header("content-length") {
        Some(v) => Some(
            v.parse::<usize>()
                .map_err(|_| HttpError::Failed(format!("bad Content-Length {v:?}")))?,
        ),
        None => None,
    };
    let too_big = || HttpError::Failed(format!("response body over {max_body} bytes"));
    if length.is_some_and(|n| n > max_body) {
        return Err(too_big());
    }

    let mut raw = buf.split_off(head_end + 4);
    let no_body = method.eq_ignore_ascii_case("HEAD")
        || status == 204
        || status == 304
        || (100..200).contains(&status);
    let body = if no_body {
        Vec::new()
    } else {
        // Read until the framing says we are done, or EOF; never past the cap.
        let limit = if chunked {
            max_body.saturating_mul(2).saturating_add(4096)
        } else {
            max_body
        };
        loop {
            if let Some(n) = length
                && !chunked
                && raw.len() >= n
            {
                raw.truncate(n);
                break raw;
            }
            if chunked && let Some(body) = dechunk(&raw, max_body)? {
                break body;
            }
            if raw.len() > limit {
                return Err(too_big());
            }
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await.map_err(io)?;
            if n == 0 {
                if chunked || length.is_some() {
                    return Err(HttpError::Failed("connection closed mid-body".into()));
                }
                break raw;
            }
            raw.extend_from_slice(&chunk[..n]);
        }
    };
    if body.len() > max_body {
        return Err(too_big());
    }
    Ok(Response {
        status,
        headers: response_headers,
        body,
    })
}

fn parse_status(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code: u16 = parts.next()?.parse().ok()?;
    (100..=999).contains(&code).then_some(code)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decodes a complete chunked body; `Ok(None)` if more bytes are needed.
fn dechunk(raw: &[u8], max_body: usize) -> Result<Option<Vec<u8>>, HttpError> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let Some(line_end) = find(&raw[at..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&raw[at..at + line_end])
            .map_err(|_| HttpError::Failed("bad chunk size".into()))?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| HttpError::Failed(format!("bad chunk size {size_text:?}")))?;
        at += line_end + 2;
        if size == 0 {
            // Trailers are ignored; the terminating CRLF may still be on its way.
            return Ok(Some(out));
        }
        if out.len().saturating_add(size) > max_body {
            return Err(HttpError::Failed(format!(
                "response body over {max_body} bytes"
            )));
        }
        if raw.len() < at + size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&raw[at..at + size]);
        at += size + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:8080/api/v1/data?x=1").expect("valid"),
            Url {
                host: "127.0.0.1".into(),
                port: 8080,
                target: "/api/v1/data?x=1".into()
            }
        );
        assert_eq!(parse_url("http://meter").expect("valid").port, 80);
        assert_eq!(parse_url("http://meter?a").expect("valid").target, "/?a");
        assert!(matches!(
            parse_url("https://x/"),
            Err(HttpError::Invalid(_))
        ));
        assert!(matches!(parse_url("ftp://x/"), Err(HttpError::Invalid(_))));
        assert!(matches!(
            parse_url("http://u:p@x/"),
            Err(HttpError::Invalid(_))
        ));
        assert!(matches!(
            parse_url("http://x/a b"),
            Err(HttpError::Invalid(_))
        ));
        assert!(matches!(
            parse_url("http://x:99999/"),
            Err(HttpError::Invalid(_))
        ));
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk(b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n", 100),
            Ok(Some(b"Wikipedia".to_vec()))
        );
        assert_eq!(dechunk(b"4\r\nWi", 100), Ok(None));
        assert!(dechunk(b"zz\r\n", 100).is_err());
        assert!(dechunk(b"ff\r\n", 10).is_err(), "over the cap");
    }
}
