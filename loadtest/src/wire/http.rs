//! The gateway's publish API as a client writes it: `POST /v1/publish` requests (HTTP/1.1,
//! keep-alive, pipelined) and counting the responses. Pure functions over byte slices, no I/O.

use std::io::Write;

/// Where the publish API is: `http://HOST:PORT/PATH`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApiTarget {
    /// `host:port` for the Host header.
    pub host: String,
    /// Resolved address.
    pub addr: std::net::SocketAddr,
    /// Path, e.g. `/v1/publish`.
    pub path: String,
    /// Bearer key, if the API needs one.
    pub key: Option<String>,
}

/// Parses `http://HOST:PORT/PATH` (IPv4 only, like the rest of the harness).
pub fn parse_url(url: &str, key: Option<String>) -> Option<ApiTarget> {
    use std::net::ToSocketAddrs;
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    let host_port = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    let addr = host_port
        .to_socket_addrs()
        .ok()?
        .find(std::net::SocketAddr::is_ipv4)?;
    Some(ApiTarget {
        host: host.to_owned(),
        addr,
        path: format!("/{path}"),
        key,
    })
}

/// Appends one `POST` with a JSON `body` to `out`.
pub fn write_post(out: &mut Vec<u8>, t: &ApiTarget, body: &[u8]) {
    let _ = write!(
        out,
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        t.path,
        t.host,
        body.len()
    );
    if let Some(k) = &t.key {
        let _ = write!(out, "Authorization: Bearer {k}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Appends `{"user_id":"<user>","payload":<payload>}`.
pub fn write_single_body(out: &mut Vec<u8>, user: &str, payload: &[u8]) {
    let _ = write!(out, r#"{{"user_id":"{user}","payload":"#);
    out.extend_from_slice(payload);
    out.push(b'}');
}

/// Appends `{"user_ids":["a","b",...],"payload":<payload>}`.
pub fn write_multi_body<'a>(
    out: &mut Vec<u8>,
    users: impl IntoIterator<Item = &'a str>,
    payload: &[u8],
) {
    out.extend_from_slice(br#"{"user_ids":["#);
    for (i, u) in users.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = write!(out, "\"{u}\"");
    }
    out.extend_from_slice(br#"],"payload":"#);
    out.extend_from_slice(payload);
    out.push(b'}');
}

/// Responses counted by [`scan_responses`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Responses {
    /// 2xx answers.
    pub ok: u64,
    /// Any other status.
    pub errors: u64,
    /// Status of the last answer seen.
    pub last_status: u16,
}

/// The publish API answered something that is not HTTP.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the publish API's answer is not HTTP/1.1")]
pub struct NotHttp;

/// The first complete response in `buf`: its status and length, or `None` if incomplete.
pub fn next_response(buf: &[u8]) -> Result<Option<(u16, usize)>, NotHttp> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(NotHttp),
    };
    let len = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .unwrap_or(0);
    if buf.len() < head + len {
        return Ok(None);
    }
    Ok(Some((resp.code.unwrap_or(0), head + len)))
}

/// Counts the complete responses at the start of `buf`; returns the counts and the bytes consumed
/// (a partial response is left for the next read).
pub fn scan_responses(buf: &[u8]) -> Result<(Responses, usize), NotHttp> {
    let mut r = Responses::default();
    let mut used = 0;
    while let Some((code, n)) = next_response(&buf[used..])? {
        if (200..300).contains(&code) {
            r.ok += 1;
        } else {
            r.errors += 1;
        }
        r.last_status = code;
        used += n;
    }
    Ok((r, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_bodies() {
        let t = parse_url("http://127.0.0.1:9095/v1/publish", Some("k".into())).unwrap();
        assert_eq!(
            (t.host.as_str(), t.path.as_str()),
            ("127.0.0.1:9095", "/v1/publish")
        );
        let mut body = Vec::new();
        write_multi_body(&mut body, ["u1", "u2"], br#"{"a":1}"#);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["user_ids"][1], "u2");
        assert_eq!(v["payload"]["a"], 1);
        let mut one = Vec::new();
        write_single_body(&mut one, "u3", b"{}");
        assert_eq!(one, br#"{"user_id":"u3","payload":{}}"#);
        let mut out = Vec::new();
        write_post(&mut out, &t, &one);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("POST /v1/publish HTTP/1.1\r\nHost: 127.0.0.1:9095\r\n"));
        assert!(s.contains("Content-Length: 29\r\n") && s.contains("Authorization: Bearer k\r\n"));
        assert!(s.ends_with("\r\n\r\n{\"user_id\":\"u3\",\"payload\":{}}"));
        assert!(parse_url("ws://x/y", None).is_none());
    }

    #[test]
    fn counts_pipelined_responses_across_reads() {
        let a = b"HTTP/1.1 200 OK\r\ncontent-length: 16\r\n\r\n{\"recipients\":1}";
        let b = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\n{}";
        let mut all = a.to_vec();
        all.extend_from_slice(b);
        all.extend_from_slice(&a[..20]);
        let (r, used) = scan_responses(&all).unwrap();
        assert_eq!((r.ok, r.errors, r.last_status), (1, 1, 503));
        assert_eq!(used, a.len() + b.len());
        assert!(scan_responses(b"SSH-2.0\r\n\r\n").is_err());
    }
}
