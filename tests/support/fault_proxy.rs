//! A fault-injecting HTTP/1.1 proxy on loopback, between the exporter (`AWS_ENDPOINT_URL`
//! points at it) and moto: it answers a chosen share of KMS requests with throttling, 5xx,
//! reset connections, garbage or truncated JSON; stalls the requests of one region; refuses
//! AssumeRole into chosen accounts; shortens the life of assumed-role sessions; and splits
//! ListKeys / ListAliases / ListResourceTags answers into pages with markers, as AWS does and
//! moto does not (it keeps the full list from moto's first answer and serves slices of it).
//!
//! Everything is configurable while it runs ([`FaultProxy::set`]) and counted
//! ([`FaultProxy::stats`]). Random draws come from a seeded generator, so a failing run can be
//! replayed with the same seed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the proxy does to the traffic; the default passes everything through.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Shares (0.0..=1.0) of KMS requests answered with each fault, drawn in this order.
    pub throttle: f64,
    pub server_error: f64,
    pub reset: f64,
    pub garbage: f64,
    pub truncated: f64,
    /// Requests signed for this region wait this long before they are forwarded.
    pub stall: Option<(String, Duration)>,
    /// AssumeRole into a role of one of these accounts is answered AccessDenied.
    pub deny_assume_role: Vec<String>,
    /// List answers are cut into pages of at most this many items.
    pub page_size: Option<usize>,
    /// AssumeRole answers say the credentials expire this long after the answer.
    pub session_lifetime: Option<Duration>,
}

/// What the proxy saw and did.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Requests by operation (`ListKeys`, `AssumeRole`, ...).
    pub requests: BTreeMap<String, u64>,
    /// Faults injected by kind (`throttle`, `server_error`, `reset`, `garbage`, `truncated`,
    /// `stall`, `deny_assume_role`).
    pub injected: BTreeMap<String, u64>,
    /// Pages served from a kept list, by operation.
    pub pages: BTreeMap<String, u64>,
    /// Bodies of the AssumeRole requests, and of moto's answers to them.
    pub assume_role_requests: Vec<String>,
    pub assume_role_answers: Vec<String>,
}

impl Stats {
    pub fn requests(&self, operation: &str) -> u64 {
        self.requests.get(operation).copied().unwrap_or(0)
    }
    pub fn injected(&self, kind: &str) -> u64 {
        self.injected.get(kind).copied().unwrap_or(0)
    }
}

struct State {
    upstream: String,
    faults: Mutex<Faults>,
    stats: Mutex<Stats>,
    /// Full lists kept for paging, by list id.
    lists: Mutex<HashMap<u64, Vec<serde_json::Value>>>,
    next_list: Mutex<u64>,
    rng: Mutex<u64>,
}

/// The running proxy; stops when dropped.
pub struct FaultProxy {
    port: u16,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (`http://127.0.0.1:PORT`, e.g. moto's endpoint).
    pub async fn start(upstream: &str) -> FaultProxy {
        Self::start_seeded(upstream, 0x5eed_cafe_f00d_d00d).await
    }

    pub async fn start_seeded(upstream: &str, seed: u64) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        let state = Arc::new(State {
            upstream: upstream
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned(),
            faults: Mutex::new(Faults::default()),
            stats: Mutex::new(Stats::default()),
            lists: Mutex::new(HashMap::new()),
            next_list: Mutex::new(0),
            rng: Mutex::new(seed | 1),
        });
        let accepting = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&accepting);
                tokio::spawn(async move {
                    let _ = serve_client(stream, state).await;
                });
            }
        });
        FaultProxy { port, state, task }
    }

    /// `http://127.0.0.1:PORT`: give this to the exporter as `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Replaces the faults; takes effect for the next request.
    pub fn set(&self, faults: Faults) {
        *self.state.faults.lock().expect("faults lock") = faults;
    }

    pub fn stats(&self) -> Stats {
        self.state.stats.lock().expect("stats lock").clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One parsed HTTP/1.1 request.
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `ListKeys` from `X-Amz-Target: TrentService.ListKeys`, or `AssumeRole` from a form body.
    fn operation(&self) -> String {
        if let Some(target) = self.header("x-amz-target") {
            return target.rsplit('.').next().unwrap_or(target).to_owned();
        }
        let body = String::from_utf8_lossy(&self.body);
        body.split('&')
            .find_map(|p| p.strip_prefix("Action="))
            .unwrap_or("unknown")
            .to_owned()
    }

    fn is_kms(&self) -> bool {
        self.header("x-amz-target")
            .is_some_and(|t| t.starts_with("TrentService."))
    }

    /// The region of the SigV4 credential scope: `Credential=AKID/DATE/REGION/SERVICE/...`.
    fn region(&self) -> Option<String> {
        let auth = self.header("authorization")?;
        let scope = auth.split("Credential=").nth(1)?;
        scope.split('/').nth(2).map(str::to_owned)
    }
}

/// Reads one request; None at a clean end of the connection.
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<Request> {
    let head_end = loop {
        if let Some(i) = find(buffer, b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let target = first.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let body_start = head_end + 4;
    while buffer.len() < body_start + length {
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = buffer[body_start..body_start + length].to_vec();
    buffer.drain(..body_start + length);
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An answer to send back.
struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(status: u16, body: &str) -> Answer {
        Answer {
            status,
            content_type: "application/x-amz-json-1.1".to_owned(),
            body: body.as_bytes().to_vec(),
        }
    }
}

enum Outcome {
    Answer(Answer),
    Reset,
}

async fn serve_client(mut stream: TcpStream, state: Arc<State>) -> std::io::Result<()> {
    let mut buffer = Vec::new();
    while let Some(request) = read_request(&mut stream, &mut buffer).await {
        match handle(&request, &state).await {
            Outcome::Answer(answer) => {
                let head = format!(
                    "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nx-amzn-requestid: fault-proxy\r\n\r\n",
                    answer.status,
                    reason(answer.status),
                    answer.content_type,
                    answer.body.len()
                );
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(&answer.body).await?;
            }
            Outcome::Reset => {
                // RST instead of FIN: the client sees "connection reset by peer". A zero
                // linger never blocks on drop, which is what the deprecation warns about.
                #[allow(deprecated)]
                let _ = stream.set_linger(Some(Duration::ZERO));
                return Ok(());
            }
        }
    }
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        _ => "Unknown",
    }
}

fn count(map: &mut BTreeMap<String, u64>, key: &str) {
    *map.entry(key.to_owned()).or_insert(0) += 1;
}

impl State {
    fn note_injected(&self, kind: &str) {
        count(&mut self.stats.lock().expect("stats").injected, kind);
    }

    /// xorshift64*: a uniform draw in [0, 1).
    fn draw(&self) -> f64 {
        let mut x = self.rng.lock().expect("rng");
        *x ^= *x >> 12;
        *x ^= *x << 25;
        *x ^= *x >> 27;
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (r >> 11) as f64 / (1u64 << 53) as f64
    }
}

async fn handle(request: &Request, state: &State) -> Outcome {
    let operation = request.operation();
    count(&mut state.stats.lock().expect("stats").requests, &operation);
    let faults = state.faults.lock().expect("faults").clone();

    if let (Some((region, delay)), Some(signed_for)) = (&faults.stall, request.region())
        && *region == signed_for
    {
        state.note_injected("stall");
        tokio::time::sleep(*delay).await;
    }

    if operation == "AssumeRole" {
        let body = String::from_utf8_lossy(&request.body).into_owned();
        state
            .stats
            .lock()
            .expect("stats")
            .assume_role_requests
            .push(body.clone());
        if faults
            .deny_assume_role
            .iter()
            .any(|account| body.contains(account.as_str()))
        {
            state.note_injected("deny_assume_role");
            return Outcome::Answer(Answer {
                status: 403,
                content_type: "text/xml".to_owned(),
                body: b"<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>User is not authorized to perform: sts:AssumeRole (injected by the fault proxy)</Message></Error><RequestId>fault-proxy</RequestId></ErrorResponse>".to_vec(),
            });
        }
    }

    if request.is_kms() {
        let r = state.draw();
        let mut edge = faults.throttle;
        if r < edge {
            state.note_injected("throttle");
            return Outcome::Answer(Answer::json(
                400,
                r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
            ));
        }
        edge += faults.server_error;
        if r < edge {
            state.note_injected("server_error");
            return Outcome::Answer(Answer::json(
                500,
                r#"{"__type":"KMSInternalException","message":"injected by the fault proxy"}"#,
            ));
        }
        edge += faults.reset;
        if r < edge {
            state.note_injected("reset");
            return Outcome::Reset;
        }
        edge += faults.garbage;
        if r < edge {
            state.note_injected("garbage");
            return Outcome::Answer(Answer::json(200, "<html><body>not JSON at all</body>"));
        }
        edge += faults.truncated;
        if r < edge {
            state.note_injected("truncated");
            let Some(mut answer) = forward(request, state).await else {
                return Outcome::Reset;
            };
            answer.body.truncate(answer.body.len() / 2);
            return Outcome::Answer(answer);
        }
        if let Some(size) = faults.page_size
            && let Some(field) = list_field(&operation)
        {
            return page(request, state, &operation, field, size).await;
        }
    }

    let Some(mut answer) = forward(request, state).await else {
        return Outcome::Reset;
    };
    if operation == "AssumeRole" {
        let text = String::from_utf8_lossy(&answer.body).into_owned();
        state
            .stats
            .lock()
            .expect("stats")
            .assume_role_answers
            .push(text.clone());
        if let Some(lifetime) = faults.session_lifetime {
            answer.body = rewrite_expiration(&text, SystemTime::now() + lifetime).into_bytes();
        }
    }
    Outcome::Answer(answer)
}

fn list_field(operation: &str) -> Option<&'static str> {
    match operation {
        "ListKeys" => Some("Keys"),
        "ListAliases" => Some("Aliases"),
        "ListResourceTags" => Some("Tags"),
        _ => None,
    }
}

/// Serves one page of a list: the first page fetches the whole list from moto and keeps it.
async fn page(
    request: &Request,
    state: &State,
    operation: &str,
    field: &str,
    size: usize,
) -> Outcome {
    let input: serde_json::Value =
        serde_json::from_slice(&request.body).unwrap_or(serde_json::json!({}));
    let limit = input
        .get("Limit")
        .and_then(|l| l.as_u64())
        .map_or(size, |l| (l as usize).min(size))
        .max(1);
    let (list_id, offset, mut shell) = match input.get("Marker").and_then(|m| m.as_str()) {
        Some(marker) => {
            let parsed = marker
                .strip_prefix("proxy-")
                .and_then(|m| m.split_once('-'))
                .and_then(|(id, off)| Some((id.parse::<u64>().ok()?, off.parse::<usize>().ok()?)));
            let Some((id, offset)) = parsed else {
                return Outcome::Answer(Answer::json(
                    400,
                    r#"{"__type":"InvalidMarkerException","message":"marker not issued by the proxy"}"#,
                ));
            };
            (id, offset, serde_json::json!({}))
        }
        None => {
            let Some(answer) = forward(request, state).await else {
                return Outcome::Reset;
            };
            if answer.status != 200 {
                return Outcome::Answer(answer);
            }
            let Ok(mut full) = serde_json::from_slice::<serde_json::Value>(&answer.body) else {
                return Outcome::Answer(answer);
            };
            let items = full
                .get_mut(field)
                .map(serde_json::Value::take)
                .and_then(|v| match v {
                    serde_json::Value::Array(items) => Some(items),
                    _ => None,
                })
                .unwrap_or_default();
            let id = {
                let mut next = state.next_list.lock().expect("next list");
                *next += 1;
                *next
            };
            state.lists.lock().expect("lists").insert(id, items);
            (id, 0, full)
        }
    };
    let lists = state.lists.lock().expect("lists");
    let Some(items) = lists.get(&list_id) else {
        return Outcome::Answer(Answer::json(
            400,
            r#"{"__type":"InvalidMarkerException","message":"unknown list"}"#,
        ));
    };
    let end = (offset + limit).min(items.len());
    let slice: Vec<serde_json::Value> = items.get(offset..end).unwrap_or_default().to_vec();
    let truncated = end < items.len();
    if let Some(object) = shell.as_object_mut() {
        object.insert(field.to_owned(), serde_json::Value::Array(slice));
        object.insert("Truncated".to_owned(), serde_json::Value::Bool(truncated));
        object.remove("NextMarker");
        if truncated {
            object.insert(
                "NextMarker".to_owned(),
                serde_json::Value::String(format!("proxy-{list_id}-{end}")),
            );
        }
    }
    drop(lists);
    count(&mut state.stats.lock().expect("stats").pages, operation);
    Outcome::Answer(Answer::json(200, &shell.to_string()))
}

/// Forwards the request to moto on a fresh connection; None when moto cannot be reached.
async fn forward(request: &Request, state: &State) -> Option<Answer> {
    let mut upstream = TcpStream::connect(&state.upstream).await.ok()?;
    let mut head = format!("{} {} HTTP/1.1\r\n", request.method, request.target);
    for (name, value) in &request.headers {
        if name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        request.body.len()
    ));
    upstream.write_all(head.as_bytes()).await.ok()?;
    upstream.write_all(&request.body).await.ok()?;
    let mut raw = Vec::new();
    upstream.read_to_end(&mut raw).await.ok()?;
    let head_end = find(&raw, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut content_type = "application/x-amz-json-1.1".to_owned();
    let mut chunked = false;
    for (name, value) in lines.filter_map(|l| l.split_once(':')) {
        if name.eq_ignore_ascii_case("content-type") {
            content_type = value.trim().to_owned();
        }
        if name.eq_ignore_ascii_case("transfer-encoding") && value.contains("chunked") {
            chunked = true;
        }
    }
    let mut body = raw[head_end + 4..].to_vec();
    if chunked {
        body = dechunk(&body)?;
    }
    Some(Answer {
        status,
        content_type,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// Replaces the `<Expiration>` of an AssumeRole answer.
fn rewrite_expiration(xml: &str, at: SystemTime) -> String {
    let (Some(start), Some(end)) = (xml.find("<Expiration>"), xml.find("</Expiration>")) else {
        return xml.to_owned();
    };
    format!(
        "{}<Expiration>{}{}",
        &xml[..start],
        humantime::format_rfc3339_seconds(at),
        &xml[end..]
    )
}
