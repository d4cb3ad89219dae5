//! A minimal HTTP/1.1 keep-alive client for the load generator.
//!
//! Why not reqwest: the load generator shares two cores with the bridge and the broker, so
//! every microsecond it spends per request is taken from what it measures. A hand-written
//! request line and a response reader that understands only what our own servers answer
//! (`Content-Length` or chunked bodies, keep-alive) cost a fraction of a general client, the way
//! `wrk` does it.

use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Where POSTs go: `host:port` and the path.
#[derive(Clone, Debug)]
pub struct Target {
    /// `127.0.0.1:8080`.
    pub authority: String,
    /// `/goto/webhook/secret`.
    pub path: String,
}

impl Target {
    /// Parses `http://host:port/path` (plain HTTP only).
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// targets are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        Ok(Target {
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }
}

/// One keep-alive connection, reopened after any error or `Connection: close`.
pub struct Connection {
    target: Target,
    io: Option<(BufReader<OwnedReadHalf>, OwnedWriteHalf)>,
    request: Vec<u8>,
    line: String,
    /// Connections opened so far (1 for a connection that never broke).
    pub opened: u64,
}

impl Connection {
    /// A connection to `target`, opened on first use.
    pub fn new(target: Target) -> Connection {
        Connection {
            target,
            io: None,
            request: Vec::with_capacity(4096),
            line: String::with_capacity(256),
            opened: 0,
        }
    }

    /// POSTs `body` as JSON; returns the response status. Any I/O error closes the connection
    /// (the next call reconnects) and is returned.
    pub async fn post(&mut self, body: &[u8], timeout: Duration) -> std::io::Result<u16> {
        match tokio::time::timeout(timeout, self.post_inner(body)).await {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(e)) => {
                self.io = None;
                Err(e)
            }
            Err(_) => {
                self.io = None;
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no response in time",
                ))
            }
        }
    }

    async fn post_inner(&mut self, body: &[u8]) -> std::io::Result<u16> {
        if self.io.is_none() {
            let stream = TcpStream::connect(&self.target.authority).await?;
            stream.set_nodelay(true)?;
            let (r, w) = stream.into_split();
            self.io = Some((BufReader::with_capacity(16 * 1024, r), w));
            self.opened += 1;
        }
        let Some((reader, writer)) = self.io.as_mut() else {
            return Err(std::io::Error::other("not connected"));
        };
        self.request.clear();
        self.request.extend_from_slice(b"POST ");
        self.request.extend_from_slice(self.target.path.as_bytes());
        self.request.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        self.request
            .extend_from_slice(self.target.authority.as_bytes());
        self.request
            .extend_from_slice(b"\r\nContent-Type: application/json\r\nContent-Length: ");
        self.request
            .extend_from_slice(body.len().to_string().as_bytes());
        self.request.extend_from_slice(b"\r\n\r\n");
        self.request.extend_from_slice(body);
        writer.write_all(&self.request).await?;
        // Status line.
        self.line.clear();
        if reader.read_line(&mut self.line).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before the response",
            ));
        }
        let status = self
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| bad(format!("bad status line {:?}", self.line.trim_end())))?;
        // Headers.
        let mut length: Option<usize> = None;
        let mut chunked = false;
        let mut close = false;
        loop {
            self.line.clear();
            if reader.read_line(&mut self.line).await? == 0 {
                return Err(bad("connection closed inside the headers".into()));
            }
            let h = self.line.trim_end();
            if h.is_empty() {
                break;
            }
            let Some((name, value)) = h.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
        // Body, discarded.
        if chunked {
            loop {
                self.line.clear();
                reader.read_line(&mut self.line).await?;
                let size =
                    usize::from_str_radix(self.line.trim_end().split(';').next().unwrap_or(""), 16)
                        .map_err(|_| bad(format!("bad chunk size {:?}", self.line.trim_end())))?;
                skip(reader, size + 2).await?;
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = length {
            skip(reader, n).await?;
        }
        if close {
            self.io = None;
        }
        Ok(status)
    }
}

async fn skip(reader: &mut BufReader<OwnedReadHalf>, mut n: usize) -> std::io::Result<()> {
    let mut buf = [0u8; 1024];
    while n > 0 {
        let take = n.min(buf.len());
        reader.read_exact(&mut buf[..take]).await?;
        n -= take;
    }
    Ok(())
}

fn bad(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_http_targets_only() {
        let t = Target::parse("http://127.0.0.1:8080/goto/webhook/s").unwrap();
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path, "/goto/webhook/s");
        assert_eq!(Target::parse("http://h:1").unwrap().path, "/");
        assert!(Target::parse("https://h/").is_err());
    }

    #[tokio::test]
    async fn posts_over_one_connection_and_reads_both_body_framings() {
        use axum::routing::post;
        let app = axum::Router::new()
            .route("/fixed", post(|| async { "{\"ok\":true}" }))
            .route(
                "/chunked",
                post(|| async {
                    let stream = futures_util::stream::iter(vec![
                        Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"ab")),
                        Ok(bytes::Bytes::from_static(b"cde")),
                    ]);
                    (
                        axum::http::StatusCode::ACCEPTED,
                        axum::body::Body::from_stream(stream),
                    )
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let t = Duration::from_secs(5);
        let mut fixed = Connection::new(Target::parse(&format!("http://{addr}/fixed")).unwrap());
        for _ in 0..3 {
            assert_eq!(fixed.post(b"{}", t).await.unwrap(), 200);
        }
        assert_eq!(fixed.opened, 1, "keep-alive must reuse the connection");
        let mut chunked =
            Connection::new(Target::parse(&format!("http://{addr}/chunked")).unwrap());
        assert_eq!(chunked.post(b"{}", t).await.unwrap(), 202);
        assert_eq!(chunked.post(b"{}", t).await.unwrap(), 202);
        assert_eq!(chunked.opened, 1);
        let mut missing = Connection::new(Target::parse(&format!("http://{addr}/nope")).unwrap());
        assert_eq!(missing.post(b"{}", t).await.unwrap(), 404);
    }
}
