//! The `moments upload` client: a tus 1.0 client over HTTP/3 (QUIC) or HTTP/1.1.
//!
//! It sends the file in chunks, each with an `Upload-Checksum`; on a network error it backs
//! off, reconnects, asks the server for the offset (HEAD) and goes on from there. The upload URL
//! is remembered per file fingerprint in a small state file, so re-running the same command after
//! a kill resumes instead of starting over. Trust is a pinned certificate fingerprint or a CA
//! file — never "accept anything".

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use common::h3client;
use common::server::tls::Trust;
use http::{HeaderMap, Method, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::tus;

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The server refused the upload for good.
    #[error("the server refused the upload ({status}): {message}")]
    Refused {
        /// Status.
        status: u16,
        /// Its reason.
        message: String,
    },
    /// Too many consecutive network failures.
    #[error("giving up after {attempts} failed attempts: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// Bad settings (URL, fingerprint, CA file).
    #[error("{0}")]
    Config(String),
    /// The moment failed to transcode.
    #[error("the moment failed: {0}")]
    MomentFailed(String),
}

/// Which protocol carries the upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/3 over QUIC.
    Http3,
    /// HTTP/1.1 over TCP.
    Http1,
}

/// Settings of one upload.
#[derive(Debug, Clone)]
pub struct Options {
    /// Base URL (`https://host:4433` for HTTP/3, `http://host:8080` for HTTP/1.1).
    pub server: String,
    /// Protocol.
    pub protocol: Protocol,
    /// Bearer token.
    pub token: String,
    /// How to trust the server over TLS (HTTP/3).
    pub trust: Option<Trust>,
    /// How big each PATCH is.
    pub chunking: Chunking,
    /// Send no faster than this many bits per second (a phone's link, for benchmarks and
    /// for sharing a link); `None`: as fast as the network allows.
    pub rate: Option<u64>,
    /// The resume state file.
    pub state_file: PathBuf,
    /// Consecutive failures before giving up.
    pub max_retries: u32,
    /// Show progress bars on stderr.
    pub progress: bool,
    /// QUIC congestion controller (the client sends the bytes).
    pub congestion: common::server::h3::Congestion,
}

/// How big each PATCH request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunking {
    /// Always this many bytes.
    Fixed(usize),
    /// Sized to take about half a second each at the rate seen so far (or the pacing rate),
    /// between 256 KiB and 16 MiB: each chunk is durable when it lands, so a transcode reading
    /// the upload as it arrives is never far behind the network, and a fast link still sends
    /// big requests. Towards the end chunks halve (down to 64 KiB), so the last bytes are
    /// durable — and the last seconds of video transcoded — moments after they are sent.
    Auto,
}

/// Smallest and largest automatic chunk, and how long one should take.
const AUTO_MIN: usize = 256 * 1024;
const AUTO_MAX: usize = 16 << 20;
const AUTO_TARGET: Duration = Duration::from_millis(500);
const AUTO_TAIL_MIN: usize = 64 * 1024;

impl Chunking {
    /// The size of the next chunk, after the last one (`last` bytes) took `took` (`None`
    /// before the first), with `remaining` bytes left to send. Pure.
    pub fn next(self, last: Option<(usize, Duration)>, rate: Option<u64>, remaining: u64) -> usize {
        match self {
            Chunking::Fixed(n) => n.max(1),
            Chunking::Auto => {
                let target = AUTO_TARGET.as_secs_f64();
                let want = if let Some(bps) = rate {
                    bps as f64 / 8.0 * target
                } else if let Some((n, took)) = last {
                    let seen = n as f64 / took.as_secs_f64().max(1e-3);
                    // grow at most 4× per chunk, so one fast burst does not make a huge chunk
                    (seen * target).min(n as f64 * 4.0)
                } else {
                    AUTO_MIN as f64
                };
                let n = (want as usize).clamp(AUTO_MIN, AUTO_MAX);
                // the tail in halves: never more than half of what is left (but not tiny)
                let half = usize::try_from(remaining / 2).unwrap_or(usize::MAX);
                n.min(half.max(AUTO_TAIL_MIN))
            }
        }
    }
}

/// How long a 429 asks the client to wait (`Retry-After` in seconds, at most a minute); zero
/// for any other answer.
fn retry_after(r: &Reply) -> Duration {
    if r.status != StatusCode::TOO_MANY_REQUESTS {
        return Duration::ZERO;
    }
    r.header("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(1), |s| Duration::from_secs(s.min(60)))
}

/// A response.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn message(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| {
                String::from_utf8_lossy(&self.body)
                    .chars()
                    .take(300)
                    .collect()
            })
    }
}

/// HTTP/3 or HTTP/1.1, with the same calls.
pub struct Transport {
    protocol: Protocol,
    congestion: common::server::h3::Congestion,
    base: url_parts::Base,
    trust: Option<Trust>,
    h3: Option<h3client::Client>,
    http: reqwest::Client,
}

mod url_parts {
    /// A parsed base URL.
    #[derive(Debug, Clone)]
    pub struct Base {
        pub scheme: String,
        pub host: String,
        pub port: u16,
    }

    pub fn parse(url: &str) -> Result<Base, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("bad server URL {url:?}: {e}"))?;
        let scheme = uri.scheme_str().unwrap_or("https").to_string();
        let host = uri
            .host()
            .ok_or_else(|| format!("server URL {url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "http" { 80 } else { 443 });
        Ok(Base { scheme, host, port })
    }
}

impl Transport {
    /// A transport to `server`.
    pub fn new(
        server: &str,
        protocol: Protocol,
        trust: Option<Trust>,
        congestion: common::server::h3::Congestion,
    ) -> Result<Transport, Error> {
        let base = url_parts::parse(server).map_err(Error::Config)?;
        if protocol == Protocol::Http3 && base.scheme != "https" {
            return Err(Error::Config(format!(
                "HTTP/3 needs an https:// server URL, got {server:?}"
            )));
        }
        let http = reqwest::Client::builder()
            .http1_only()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Transport {
            protocol,
            congestion,
            base,
            trust,
            h3: None,
            http,
        })
    }

    async fn h3(&mut self) -> Result<&mut h3client::Client, String> {
        if self.h3.is_none() {
            let addr = tokio::net::lookup_host((self.base.host.as_str(), self.base.port))
                .await
                .map_err(|e| format!("cannot resolve {}: {e}", self.base.host))?
                .next()
                .ok_or_else(|| format!("{} has no address", self.base.host))?;
            let trust = self
                .trust
                .clone()
                .ok_or("HTTP/3 needs --cert-sha256 or --ca-file")?;
            let c = h3client::Client::connect_with(addr, &self.base.host, &trust, self.congestion)
                .await
                .map_err(|e| e.to_string())?;
            self.h3 = Some(c);
        }
        self.h3.as_mut().ok_or_else(|| "no connection".to_string())
    }

    fn url(&self, path: &str) -> String {
        let host = if self.base.host.contains(':') {
            format!("[{}]", self.base.host)
        } else {
            self.base.host.clone()
        };
        format!("{}://{host}:{}{path}", self.base.scheme, self.base.port)
    }

    /// Sends a request; an `Err` is a network failure worth retrying.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Reply, String> {
        match self.protocol {
            Protocol::Http3 => {
                let url = self.url(path);
                let mut b = http::Request::builder().method(method).uri(url);
                for (k, v) in headers {
                    b = b.header(*k, v);
                }
                let req = b.body(()).map_err(|e| e.to_string())?;
                let c = self.h3().await?;
                match c.send(req, body, 1 << 20).await {
                    Ok(r) => Ok(Reply {
                        status: r.head.status(),
                        headers: r.head.headers().clone(),
                        body: r.body,
                    }),
                    Err(e) => {
                        self.h3 = None; // reconnect next time
                        Err(e.to_string())
                    }
                }
            }
            Protocol::Http1 => {
                let mut req = self.http.request(method, self.url(path));
                for (k, v) in headers {
                    req = req.header(*k, v);
                }
                let resp = req.body(body).send().await.map_err(|e| e.to_string())?;
                let status = resp.status();
                let headers = resp.headers().clone();
                let body = resp.bytes().await.map_err(|e| e.to_string())?;
                Ok(Reply {
                    status,
                    headers,
                    body,
                })
            }
        }
    }

    /// Follows `GET path` as Server-Sent Events, calling `on_data` with each `data:` payload
    /// until it returns `Some`.
    pub async fn follow<T>(
        &mut self,
        path: &str,
        token: &str,
        mut on_data: impl FnMut(&str) -> Option<T>,
    ) -> Result<Option<T>, String> {
        let auth = format!("Bearer {token}");
        let mut pending = String::new();
        let mut feed = |chunk: &[u8], pending: &mut String| -> Option<T> {
            pending.push_str(&String::from_utf8_lossy(chunk));
            while let Some(i) = pending.find("\n\n") {
                let event: String = pending.drain(..i + 2).collect();
                for line in event.lines() {
                    if let Some(d) = line.strip_prefix("data:")
                        && let Some(t) = on_data(d.trim())
                    {
                        return Some(t);
                    }
                }
            }
            None
        };
        match self.protocol {
            Protocol::Http3 => {
                let url = self.url(path);
                let req = http::Request::get(url)
                    .header("authorization", auth)
                    .header("accept", "text/event-stream")
                    .body(())
                    .map_err(|e| e.to_string())?;
                let c = self.h3().await?;
                let mut s = c.open(req).await.map_err(|e| e.to_string())?;
                if !s.head.status().is_success() {
                    return Err(format!("events: HTTP {}", s.head.status()));
                }
                while let Some(chunk) = s.chunk().await.map_err(|e| e.to_string())? {
                    if let Some(t) = feed(&chunk, &mut pending) {
                        return Ok(Some(t));
                    }
                }
                Ok(None)
            }
            Protocol::Http1 => {
                use futures::StreamExt;
                let resp = self
                    .http
                    .get(self.url(path))
                    .header("authorization", auth)
                    .header("accept", "text/event-stream")
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !resp.status().is_success() {
                    return Err(format!("events: HTTP {}", resp.status()));
                }
                let mut body = resp.bytes_stream();
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.map_err(|e| e.to_string())?;
                    if let Some(t) = feed(&chunk, &mut pending) {
                        return Ok(Some(t));
                    }
                }
                Ok(None)
            }
        }
    }
}

/// The resume state: upload URLs by file fingerprint.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    uploads: BTreeMap<String, String>,
}

fn load_state(path: &Path) -> State {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_state(path: &Path, state: &State) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tmp = path.with_extension("tmp");
    if let Ok(bytes) = serde_json::to_vec_pretty(state)
        && std::fs::write(&tmp, bytes).is_ok()
    {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// Identifies "the same file to the same server": size, modification time and the first and
/// last MiB (cheap even for large files).
pub fn fingerprint(path: &Path, server: &str) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    let mut h = Sha256::new();
    h.update(server.as_bytes());
    h.update(meta.len().to_le_bytes());
    if let Ok(m) = meta.modified()
        && let Ok(d) = m.duration_since(std::time::UNIX_EPOCH)
    {
        h.update(d.as_nanos().to_le_bytes());
    }
    let mut buf = vec![0u8; 1 << 20];
    let n = f.read(&mut buf)?;
    h.update(&buf[..n]);
    if meta.len() > (2 << 20) {
        f.seek(SeekFrom::End(-(1 << 20)))?;
        let n = f.read(&mut buf)?;
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The media type announced for a file, by extension.
pub fn filetype(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "mp4" | "m4v" => "video/mp4",
        "mov" | "qt" => "video/quicktime",
        "webm" => "video/webm",
        "mkv" => "video/x-matroska",
        "3gp" => "video/3gpp",
        "avi" => "video/x-msvideo",
        "ts" => "video/mp2t",
        _ => return None,
    })
}

/// What a finished upload produced.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// The moment id.
    pub moment: String,
    /// The upload URL.
    pub url: String,
    /// Where the upload started (0 unless resumed).
    pub resumed_from: u64,
    /// True when an earlier attempt's upload URL was reused.
    pub resumed: bool,
    /// File size.
    pub size: u64,
    /// When sending began (ms since the epoch).
    pub started_ms: i64,
    /// When the last chunk was handed to the network (ms since the epoch): with pacing, when
    /// a link of that rate would have delivered the last byte.
    pub last_chunk_ms: i64,
    /// When the server acknowledged the last byte (ms since the epoch).
    pub done_ms: i64,
}

fn path_of(url: &str) -> String {
    url.parse::<http::Uri>()
        .ok()
        .and_then(|u| u.path_and_query().map(|p| p.as_str().to_string()))
        .unwrap_or_else(|| url.to_string())
}

fn bar(progress: bool, len: u64, template: &str) -> indicatif::ProgressBar {
    if !progress {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        b.set_style(style.progress_chars("=> "));
    }
    b
}

/// Uploads `file`, resuming an earlier attempt of the same file when the state file knows it.
pub async fn upload(file: &Path, opts: &Options) -> Result<Uploaded, Error> {
    let ferr = |source| Error::File {
        path: file.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(file).map_err(ferr)?.len();
    let fp = fingerprint(file, &opts.server).map_err(ferr)?;
    let mut t = Transport::new(
        &opts.server,
        opts.protocol,
        opts.trust.clone(),
        opts.congestion,
    )?;
    let auth = format!("Bearer {}", opts.token);
    let base = [
        ("authorization", auth.clone()),
        ("tus-resumable", tus::VERSION.to_string()),
    ];
    let mut state = load_state(&opts.state_file);
    let mut failures = 0u32;
    let mut last_error = String::new();
    let retry = |failures: u32| {
        common::queue::retry_delay(
            failures,
            Duration::from_millis(300),
            Duration::from_secs(8),
            rand_unit(),
        )
    };

    // 1. find or create the upload
    let mut url = state.uploads.get(&fp).cloned();
    let mut resumed = false;
    let mut offset = 0u64;
    let mut moment: Option<String>;
    // how long the server asked us to wait (429's Retry-After), at least the backoff
    let mut asked = Duration::ZERO;
    loop {
        if failures > opts.max_retries {
            return Err(Error::GaveUp {
                attempts: failures,
                last: last_error,
            });
        }
        if let Some(u) = &url {
            match t.send(Method::HEAD, &path_of(u), &base, Bytes::new()).await {
                Ok(r) if r.status == StatusCode::OK => {
                    offset = r
                        .header("upload-offset")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    moment = r.header("moment-id").map(str::to_string);
                    resumed = true;
                    break;
                }
                Ok(r) if matches!(r.status.as_u16(), 404 | 410 | 403) => {
                    url = None; // gone or expired: start over
                    state.uploads.remove(&fp);
                    continue;
                }
                Ok(r) => {
                    last_error = format!("HEAD: {} {}", r.status, r.message());
                }
                Err(e) => last_error = e,
            }
        } else {
            let mut headers = base.to_vec();
            headers.push(("upload-length", size.to_string()));
            let mut meta = vec![];
            if let Some(name) = file.file_name().and_then(|n| n.to_str()) {
                meta.push(format!("filename {}", B64.encode(name)));
            }
            if let Some(ft) = filetype(file) {
                meta.push(format!("filetype {}", B64.encode(ft)));
            }
            headers.push(("upload-metadata", meta.join(",")));
            match t.send(Method::POST, "/files", &headers, Bytes::new()).await {
                Ok(r) if r.status == StatusCode::CREATED => {
                    let Some(loc) = r.header("location") else {
                        return Err(Error::Refused {
                            status: 201,
                            message: "no Location in the creation answer".into(),
                        });
                    };
                    url = Some(loc.to_string());
                    moment = r.header("moment-id").map(str::to_string);
                    state.uploads.insert(fp.clone(), loc.to_string());
                    save_state(&opts.state_file, &state);
                    break;
                }
                Ok(r)
                    if r.status.is_client_error() && r.status != StatusCode::TOO_MANY_REQUESTS =>
                {
                    return Err(Error::Refused {
                        status: r.status.as_u16(),
                        message: r.message(),
                    });
                }
                Ok(r) => {
                    asked = retry_after(&r);
                    last_error = format!("POST: {} {}", r.status, r.message());
                }
                Err(e) => last_error = e,
            }
        }
        failures += 1;
        tokio::time::sleep(retry(failures).max(std::mem::take(&mut asked))).await;
    }
    let url = url.unwrap_or_default();
    let resumed_from = offset;

    // 2. send the chunks
    let pb = bar(
        opts.progress,
        size,
        "{spinner} upload [{bar:32}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    );
    pb.set_position(offset);
    let mut f = std::fs::File::open(file).map_err(ferr)?;
    let path = path_of(&url);
    failures = 0;
    let started = std::time::Instant::now();
    let started_ms = common::ids::now_ms();
    let paced_from = offset;
    let mut last: Option<(usize, Duration)> = None;
    let mut last_chunk_ms = started_ms;
    while offset < size {
        let n =
            (size - offset).min(opts.chunking.next(last, opts.rate, size - offset) as u64) as usize;
        let mut buf = vec![0u8; n];
        f.seek(SeekFrom::Start(offset)).map_err(ferr)?;
        f.read_exact(&mut buf).map_err(ferr)?;
        let chunk = Bytes::from(buf);
        let digest = B64.encode(Sha256::digest(&chunk));
        let mut headers = base.to_vec();
        headers.push(("upload-offset", offset.to_string()));
        headers.push(("content-type", tus::OFFSET_OCTET_STREAM.to_string()));
        headers.push(("upload-checksum", format!("sha256 {digest}")));
        if let Some(bps) = opts.rate.filter(|r| *r > 0) {
            // send each chunk when a link of this rate would have delivered its last byte
            let due =
                Duration::from_secs_f64((offset + n as u64 - paced_from) as f64 * 8.0 / bps as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let sent = std::time::Instant::now();
        if offset + n as u64 == size {
            last_chunk_ms = common::ids::now_ms();
        }
        match t.send(Method::PATCH, &path, &headers, chunk).await {
            Ok(r) if r.status == StatusCode::NO_CONTENT => {
                offset = r
                    .header("upload-offset")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(offset + n as u64);
                if let Some(m) = r.header("moment-id") {
                    moment = Some(m.to_string());
                }
                last = Some((n, sent.elapsed()));
                pb.set_position(offset);
                failures = 0;
                continue;
            }
            Ok(r)
                if matches!(r.status.as_u16(), 409 | 423 | 429 | 460)
                    || r.status.is_server_error() =>
            {
                // 429: this user sends faster than the server's request limit; slow down
                asked = retry_after(&r);
                last_error = format!("PATCH: {} {}", r.status, r.message());
            }
            Ok(r) => {
                pb.abandon();
                return Err(Error::Refused {
                    status: r.status.as_u16(),
                    message: r.message(),
                });
            }
            Err(e) => last_error = e,
        }
        failures += 1;
        if failures > opts.max_retries {
            pb.abandon();
            return Err(Error::GaveUp {
                attempts: failures,
                last: last_error,
            });
        }
        if opts.progress {
            pb.println(format!("retrying ({last_error})"));
        }
        tokio::time::sleep(retry(failures).max(std::mem::take(&mut asked))).await;
        // the server knows best where we stand
        if let Ok(r) = t.send(Method::HEAD, &path, &base, Bytes::new()).await
            && r.status == StatusCode::OK
            && let Some(o) = r.header("upload-offset").and_then(|v| v.parse().ok())
        {
            offset = o;
            pb.set_position(offset);
        }
    }
    // A zero-length file, or a resumed upload that was already complete.
    if moment.is_none()
        && let Ok(r) = t.send(Method::HEAD, &path, &base, Bytes::new()).await
    {
        moment = r.header("moment-id").map(str::to_string);
    }
    pb.finish_and_clear();
    if let Some(c) = &t.h3 {
        let st = c.stats();
        tracing::debug!(
            lost_packets = st.path.lost_packets,
            sent_packets = st.path.sent_packets,
            congestion_events = st.path.congestion_events,
            mtu = st.path.current_mtu,
            rtt_ms = st.path.rtt.as_millis() as u64,
            cwnd = st.path.cwnd,
            "QUIC connection statistics"
        );
    }
    state.uploads.remove(&fp);
    save_state(&opts.state_file, &state);
    Ok(Uploaded {
        moment: moment.unwrap_or_default(),
        url,
        resumed_from,
        resumed,
        size,
        started_ms,
        last_chunk_ms,
        done_ms: common::ids::now_ms(),
    })
}

/// Follows the moment's events until it is ready; returns its master playlist URL.
pub async fn wait_ready(moment: &str, opts: &Options) -> Result<String, Error> {
    let mut t = Transport::new(
        &opts.server,
        opts.protocol,
        opts.trust.clone(),
        opts.congestion,
    )?;
    let pb = bar(
        opts.progress,
        1000,
        "{spinner} {msg:28} [{bar:32}] {percent}%",
    );
    let mut failures = 0;
    loop {
        let path = format!("/v1/moments/{moment}/events");
        let outcome = t
            .follow(&path, &opts.token, |data| {
                let v: serde_json::Value = serde_json::from_str(data).ok()?;
                let state = v["state"].as_str().unwrap_or("");
                pb.set_message(match v["encoded_s"].as_f64() {
                    Some(e) if state != "ready" => format!("{state} ({e:.1} s encoded)"),
                    _ => state.to_string(),
                });
                pb.set_position((v["progress"].as_f64().unwrap_or(0.0) * 1000.0) as u64);
                match state {
                    "ready" => Some(Ok(v["master_url"].as_str().unwrap_or("").to_string())),
                    "failed" => Some(Err(v["error"]
                        .as_str()
                        .unwrap_or("unknown error")
                        .to_string())),
                    _ => None,
                }
            })
            .await;
        match outcome {
            Ok(Some(Ok(url))) => {
                pb.finish_and_clear();
                return Ok(url);
            }
            Ok(Some(Err(e))) => {
                pb.abandon();
                return Err(Error::MomentFailed(e));
            }
            Ok(None) | Err(_) if failures < opts.max_retries => {
                failures += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(None) => {
                return Err(Error::GaveUp {
                    attempts: failures,
                    last: "the event stream ended".into(),
                });
            }
            Err(e) => {
                return Err(Error::GaveUp {
                    attempts: failures,
                    last: e,
                });
            }
        }
    }
}

fn rand_unit() -> f64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(n % 1000) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_429_is_waited_out_for_as_long_as_it_asks_within_a_minute() {
        let reply = |status: u16, after: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(a) = after {
                headers.insert("retry-after", a.parse().unwrap());
            }
            Reply {
                status: StatusCode::from_u16(status).unwrap(),
                headers,
                body: Bytes::new(),
            }
        };
        assert_eq!(
            retry_after(&reply(429, Some("17"))),
            Duration::from_secs(17)
        );
        assert_eq!(
            retry_after(&reply(429, Some("86400"))),
            Duration::from_secs(60)
        );
        assert_eq!(
            retry_after(&reply(429, Some("soon"))),
            Duration::from_secs(1)
        );
        assert_eq!(retry_after(&reply(429, None)), Duration::from_secs(1));
        assert_eq!(retry_after(&reply(503, Some("5"))), Duration::ZERO);
    }

    #[test]
    fn filetypes_by_extension() {
        assert_eq!(filetype(Path::new("a/b.MP4")), Some("video/mp4"));
        assert_eq!(filetype(Path::new("clip.mov")), Some("video/quicktime"));
        assert_eq!(filetype(Path::new("notes.txt")), None);
        assert_eq!(filetype(Path::new("noext")), None);
    }

    #[test]
    fn automatic_chunks_take_about_half_a_second() {
        let auto = Chunking::Auto;
        let far = 1 << 40; // far from the end
        assert_eq!(
            auto.next(None, None, far),
            AUTO_MIN,
            "start small: the header lands early"
        );
        // 10 Mbit/s pacing: 625 kB chunks
        assert_eq!(auto.next(None, Some(10_000_000), far), 625_000);
        // 1 MiB took 0.1 s (10 MiB/s): grow, but at most 4× at once
        let n = auto.next(Some((1 << 20, Duration::from_millis(100))), None, far);
        assert_eq!(n, 4 << 20);
        // 1 MiB took 1 s: half a MiB next
        let n = auto.next(Some((1 << 20, Duration::from_secs(1))), None, far);
        assert_eq!(n, 512 * 1024);
        // bounded on both sides
        let n = auto.next(Some((AUTO_MAX, Duration::from_millis(1))), None, far);
        assert_eq!(n, AUTO_MAX);
        let n = auto.next(Some((AUTO_MIN, Duration::from_secs(60))), None, far);
        assert_eq!(n, AUTO_MIN);
        // the tail comes in halves, down to 64 KiB
        let paced = |left| auto.next(None, Some(10_000_000), left);
        assert_eq!(paced(1_000_000), 500_000);
        assert_eq!(paced(200_000), 100_000);
        assert_eq!(paced(100_000), AUTO_TAIL_MIN);
        let mut left = 3_000_000u64;
        let mut sizes = Vec::new();
        while left > 0 {
            let n = (paced(left) as u64).min(left);
            sizes.push(n);
            left -= n;
        }
        assert_eq!(sizes.iter().sum::<u64>(), 3_000_000);
        assert!(*sizes.last().unwrap() <= AUTO_TAIL_MIN as u64, "{sizes:?}");
        assert!(sizes.len() <= 12, "{sizes:?}");
        // fixed sizes stay fixed
        assert_eq!(Chunking::Fixed(4 << 20).next(None, Some(1), 10), 4 << 20);
        assert_eq!(Chunking::Fixed(0).next(None, None, far), 1);
    }

    #[test]
    fn url_paths() {
        assert_eq!(path_of("https://h:4433/files/abc"), "/files/abc");
        assert_eq!(path_of("/files/abc"), "/files/abc");
    }

    #[test]
    fn fingerprints_change_with_content_and_server() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.bin");
        std::fs::write(&p, vec![1u8; 3 << 20]).unwrap();
        let a = fingerprint(&p, "https://a").unwrap();
        assert_eq!(a, fingerprint(&p, "https://a").unwrap());
        assert_ne!(a, fingerprint(&p, "https://b").unwrap());
        let mut data = vec![1u8; 3 << 20];
        data[(3 << 20) - 1] = 2;
        std::fs::write(&p, data).unwrap();
        assert_ne!(a, fingerprint(&p, "https://a").unwrap());
    }
}
