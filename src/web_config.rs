//! The web configuration file (`--web.config.file`) of Prometheus' exporter-toolkit: TLS,
//! basic-auth users with bcrypt hashes, extra response headers; re-read when it changes.
//!
//! The file (and the certificate, key and CA files it names) is checked on every new connection
//! by size and modification time, and re-read when either moved, as exporter-toolkit re-reads it
//! per request; SIGHUP forces a re-read. A file that no longer parses keeps the last good one.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use base64::Engine as _;
use hyper::header::{HeaderName, HeaderValue};
use rustls::ServerConfig;
use serde::Deserialize;
use tracing::{error, info};

use crate::tls::{self, ClientAuthType, TlsMaterial, TlsVersion};

/// Headers that may be set, and their accepted values (any when empty): exporter-toolkit's list,
/// kept small on purpose so that the file cannot override what the server itself sets.
const EXTRA_HEADERS: [(&str, &[&str]); 5] = [
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

/// Successful and failed bcrypt checks remembered (bcrypt is slow on purpose).
const AUTH_CACHE_ENTRIES: usize = 1024;

/// Password hashed for unknown users, so that they cost as much time as known ones.
const DECOY_PASSWORD: &str = "app-tier-cmk-exporter-decoy";

/// A web configuration that could not be used; names the file, the key and what to do.
#[derive(Debug, thiserror::Error)]
#[error("web config file {}: {message}", path.display())]
pub struct WebConfigError {
    pub path: PathBuf,
    pub message: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    tls_server_config: Option<FileTls>,
    http_server_config: Option<FileHttp>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    cert: Option<String>,
    key: Option<String>,
    client_auth_type: Option<ClientAuthType>,
    client_ca_file: Option<PathBuf>,
    client_ca: Option<String>,
    min_version: Option<TlsVersion>,
    max_version: Option<TlsVersion>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHttp {
    /// `http2`: accepted for compatibility and ignored; this server speaks HTTP/1.1 only.
    #[serde(rename = "http2")]
    _http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// What the server applies: TLS (or none), users, extra headers.
#[derive(Default)]
pub struct WebSecurity {
    pub tls: Option<Arc<ServerConfig>>,
    /// Username -> bcrypt hash. Empty: no authentication.
    pub users: BTreeMap<String, String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl fmt::Debug for WebSecurity {
    // Hashes stay out of debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSecurity")
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("headers", &self.headers)
            .finish()
    }
}

impl WebSecurity {
    /// Reads and checks the file; relative paths in it are relative to its directory.
    pub fn load(path: &Path) -> Result<WebSecurity, WebConfigError> {
        let fail = |message: String| WebConfigError {
            path: path.to_owned(),
            message,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it ({e})")))?;
        let file: FileConfig = if text.trim().is_empty() {
            FileConfig::default()
        } else {
            serde_norway::from_str(&text).map_err(|e| fail(format!("{e}")))?
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let tls = match file.tls_server_config {
            Some(t) if t != FileTls::default() => Some(
                tls::server_config(&read_tls_material(t, dir).map_err(fail)?)
                    .map_err(|e| fail(format!("key `tls_server_config`: {e}")))?,
            ),
            _ => None,
        };
        let mut users = BTreeMap::new();
        for (user, hash) in file.basic_auth_users.unwrap_or_default() {
            if user.is_empty() || user.contains(':') {
                return Err(fail(format!(
                    "key `basic_auth_users`: user name {user:?} is empty or holds ':'; basic auth cannot carry it"
                )));
            }
            if bcrypt::HashParts::from_str(&hash).is_err() {
                return Err(fail(format!(
                    "key `basic_auth_users.{user}`: not a bcrypt hash; make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`"
                )));
            }
            users.insert(user, hash);
        }
        let FileHttp {
            headers: configured,
            ..
        } = file.http_server_config.unwrap_or_default();
        let mut headers = Vec::new();
        for (name, value) in configured.unwrap_or_default() {
            let Some((canonical, allowed)) = EXTRA_HEADERS
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(&name))
            else {
                let names: Vec<&str> = EXTRA_HEADERS.iter().map(|(n, _)| *n).collect();
                return Err(fail(format!(
                    "key `http_server_config.headers.{name}`: this header can not be configured; allowed: {}",
                    names.join(", ")
                )));
            };
            if value.is_empty() {
                continue; // exporter-toolkit: blank means unset
            }
            if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
                return Err(fail(format!(
                    "key `http_server_config.headers.{canonical}`: {value:?} is not accepted; use one of {allowed:?}"
                )));
            }
            let header_value = HeaderValue::from_str(&value).map_err(|_| {
                fail(format!(
                    "key `http_server_config.headers.{canonical}`: {value:?} is not a valid header value"
                ))
            })?;
            let header_name = HeaderName::from_bytes(canonical.as_bytes()).map_err(|_| {
                fail(format!(
                    "key `http_server_config.headers.{canonical}`: not a header name"
                ))
            })?;
            headers.push((header_name, header_value));
        }
        headers.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        Ok(WebSecurity {
            tls,
            users,
            headers,
        })
    }

    /// Highest bcrypt cost among the users (the decoy's cost).
    fn max_cost(&self) -> u32 {
        self.users
            .values()
            .filter_map(|h| bcrypt::HashParts::from_str(h).ok())
            .map(|p| p.get_cost())
            .max()
            .unwrap_or(4)
    }
}

fn read_tls_material(t: FileTls, dir: &Path) -> Result<TlsMaterial, String> {
    let read = |key: &str, inline: Option<String>, file: Option<PathBuf>| match (inline, file) {
        (Some(_), Some(_)) => Err(format!(
            "key `tls_server_config.{key}`: set either {key} or {key}_file, not both"
        )),
        (Some(text), None) => Ok(Some(text.into_bytes())),
        (None, Some(file)) => {
            let file = dir.join(file);
            std::fs::read(&file).map(Some).map_err(|e| {
                format!(
                    "key `tls_server_config.{key}_file`: cannot read {} ({e})",
                    file.display()
                )
            })
        }
        (None, None) => Ok(None),
    };
    let cert_pem = read("cert", t.cert, t.cert_file)?
        .ok_or_else(|| "key `tls_server_config.cert_file`: missing".to_owned())?;
    let key_pem = read("key", t.key, t.key_file)?
        .ok_or_else(|| "key `tls_server_config.key_file`: missing".to_owned())?;
    let client_ca_pem = read("client_ca", t.client_ca, t.client_ca_file)?;
    Ok(TlsMaterial {
        cert_pem,
        key_pem,
        client_ca_pem,
        client_auth: t.client_auth_type.unwrap_or_default(),
        min_version: t.min_version.unwrap_or(TlsVersion::TLS12),
        max_version: t.max_version.unwrap_or(TlsVersion::TLS13),
    })
}

/// Size and modification time of a file (None when it cannot be read).
type Stamp = Option<(SystemTime, u64)>;

/// The config file and the files it names (certificate rotation changes those alone); a loose
/// parse finds them, so that a file that does not load yet is still watched.
fn watched_files(path: &Path) -> Vec<PathBuf> {
    let mut files = vec![path.to_owned()];
    if let Ok(text) = std::fs::read_to_string(path)
        && let Ok(file) = serde_norway::from_str::<FileConfig>(&text)
        && let Some(t) = file.tls_server_config
    {
        let dir = path.parent().unwrap_or(Path::new("."));
        files.extend(
            [t.cert_file, t.key_file, t.client_ca_file]
                .into_iter()
                .flatten()
                .map(|f| dir.join(f)),
        );
    }
    files
}

fn stamps(files: &[PathBuf]) -> Vec<Stamp> {
    files
        .iter()
        .map(|f| {
            let meta = std::fs::metadata(f).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

struct Watched {
    current: Arc<WebSecurity>,
    files: Vec<PathBuf>,
    stamps: Vec<Stamp>,
}

/// The web configuration in force, re-read when its files change.
pub struct WebConfigWatcher {
    path: PathBuf,
    state: Mutex<Watched>,
}

impl WebConfigWatcher {
    /// Loads the file; an error here stops the exporter from starting.
    pub fn load(path: &Path) -> Result<WebConfigWatcher, WebConfigError> {
        let files = watched_files(path);
        let stamps = stamps(&files);
        let current = Arc::new(WebSecurity::load(path)?);
        Ok(WebConfigWatcher {
            path: path.to_owned(),
            state: Mutex::new(Watched {
                current,
                files,
                stamps,
            }),
        })
    }

    /// The configuration to apply now; re-reads the files when one of them changed (a few
    /// `stat` calls per connection and request otherwise).
    pub fn current(&self) -> Arc<WebSecurity> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if stamps(&state.files) != state.stamps {
            let _ = self.apply(&mut state);
        }
        Arc::clone(&state.current)
    }

    /// Re-reads the files now (SIGHUP). Errors are logged and returned; the old one stays.
    pub fn reload(&self) -> Result<(), WebConfigError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.apply(&mut state)
    }

    fn apply(&self, state: &mut Watched) -> Result<(), WebConfigError> {
        // Remember what was seen, good or bad: a broken file is reported once, not per request.
        state.files = watched_files(&self.path);
        state.stamps = stamps(&state.files);
        let result = WebSecurity::load(&self.path).and_then(|new| {
            if new.tls.is_some() != state.current.tls.is_some() {
                Err(WebConfigError {
                    path: self.path.clone(),
                    message: "switching between HTTP and HTTPS needs a restart; keeping the running configuration".to_owned(),
                })
            } else {
                Ok(new)
            }
        });
        match result {
            Ok(new) => {
                info!(file = %self.path.display(), tls = new.tls.is_some(), users = new.users.len(), "web config file reloaded");
                state.current = Arc::new(new);
                Ok(())
            }
            Err(e) => {
                error!(error = %e, "web config file not reloaded; the previous one stays in force");
                Err(e)
            }
        }
    }
}

/// Basic-auth checks with a cache: bcrypt costs tens of milliseconds per check by design, so a
/// checked (user, hash, password) is remembered by its SHA-256, never in clear.
#[derive(Default)]
pub struct Authenticator {
    cache: Mutex<HashMap<[u8; 32], bool>>,
    decoys: Mutex<HashMap<u32, String>>,
    /// One bcrypt at a time: a burst of bad passwords cannot take every core.
    bcrypt: tokio::sync::Mutex<()>,
}

impl Authenticator {
    /// True when `security` needs no authentication or `authorization` carries a valid user.
    pub async fn allows(
        &self,
        security: &WebSecurity,
        authorization: Option<&HeaderValue>,
    ) -> bool {
        if security.users.is_empty() {
            return true;
        }
        let Some((user, password)) = authorization.and_then(parse_basic) else {
            return false;
        };
        let (hash, known) = match security.users.get(&user) {
            Some(hash) => (hash.clone(), true),
            None => match self.decoy(security.max_cost()).await {
                Some(hash) => (hash, false),
                None => return false,
            },
        };
        let key = cache_key(&user, &hash, &password);
        if let Some(ok) = self.cached(&key) {
            return ok && known;
        }
        let _one_at_a_time = self.bcrypt.lock().await;
        let verified = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= AUTH_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, verified);
        verified && known
    }

    fn cached(&self, key: &[u8; 32]) -> Option<bool> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(key).copied()
    }

    async fn decoy(&self, cost: u32) -> Option<String> {
        if let Some(hash) = self
            .decoys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&cost)
        {
            return Some(hash.clone());
        }
        let hash = tokio::task::spawn_blocking(move || bcrypt::hash(DECOY_PASSWORD, cost))
            .await
            .ok()?
            .ok()?;
        self.decoys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cost, hash.clone());
        Some(hash)
    }
}

/// `Basic base64(user:password)` -> (user, password).
fn parse_basic(value: &HeaderValue) -> Option<(String, String)> {
    let value = value.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn cache_key(user: &str, hash: &str, password: &str) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [user, hash, password] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        let mut f = std::fs::File::create(&path).expect("create");
        f.write_all(text.as_bytes()).expect("write");
        path
    }

    fn load(text: &str) -> Result<WebSecurity, String> {
        let dir = tempfile::tempdir().expect("dir");
        let path = write(dir.path(), "web.yml", text);
        WebSecurity::load(&path).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_means_plain_http_without_auth() {
        let s = load("").expect("empty is fine");
        assert!(s.tls.is_none() && s.users.is_empty() && s.headers.is_empty());
        let s = load("tls_server_config: {}\nbasic_auth_users:\n").expect("empty sections");
        assert!(s.tls.is_none() && s.users.is_empty());
    }

    #[test]
    fn unknown_key_is_refused_with_file_and_key() {
        let e = load("tls_server_config:\n  cert_fil: x.pem\n").expect_err("typo");
        assert!(e.contains("web.yml") && e.contains("cert_fil"), "{e}");
        let e = load("basic_auth: {}\n").expect_err("unknown top-level key");
        assert!(e.contains("basic_auth"), "{e}");
    }

    #[test]
    fn unknown_client_auth_type_is_refused() {
        let e =
            load("tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: Always\n")
                .expect_err("bad policy");
        assert!(
            e.contains("Always") && e.contains("RequireAndVerifyClientCert"),
            "{e}"
        );
    }

    #[test]
    fn missing_certificate_file_is_named() {
        let e = load("tls_server_config:\n  cert_file: nope.pem\n  key_file: nope.key\n")
            .expect_err("no such file");
        assert!(e.contains("cert_file") && e.contains("nope.pem"), "{e}");
    }

    #[test]
    fn headers_outside_the_allowed_list_are_refused() {
        for name in [
            "Authorization",
            "Content-Type",
            "Set-Cookie",
            "WWW-Authenticate",
        ] {
            let e = load(&format!("http_server_config:\n  headers:\n    {name}: x\n"))
                .expect_err("reserved header");
            assert!(
                e.contains(name) && e.contains("can not be configured"),
                "{e}"
            );
        }
        let e = load("http_server_config:\n  headers:\n    X-Frame-Options: allow\n")
            .expect_err("bad value");
        assert!(e.contains("allow") && e.contains("sameorigin"), "{e}");
        let s = load(
            "http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n    Content-Security-Policy: \"default-src 'self'\"\n    X-XSS-Protection: \"\"\n",
        )
        .expect("valid headers");
        let names: Vec<&str> = s.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["content-security-policy", "x-frame-options"]);
    }

    #[test]
    fn users_need_bcrypt_hashes() {
        let e = load("basic_auth_users:\n  alice: plaintext\n").expect_err("not a hash");
        assert!(
            e.contains("basic_auth_users.alice") && e.contains("bcrypt"),
            "{e}"
        );
        assert!(
            !e.contains("plaintext"),
            "the value stays out of the message: {e}"
        );
        let hash = bcrypt::hash("pw", 4).expect("hash");
        let s = load(&format!("basic_auth_users:\n  alice: '{hash}'\n")).expect("valid");
        assert_eq!(s.users.len(), 1);
        assert_eq!(s.max_cost(), 4);
    }

    fn basic(user: &str, password: &str) -> HeaderValue {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {encoded}")).expect("header")
    }

    #[tokio::test]
    async fn basic_auth_accepts_only_the_right_password_and_caches_checks() {
        let hash = bcrypt::hash("right", 4).expect("hash");
        let security = WebSecurity {
            users: [("alice".to_owned(), hash)].into_iter().collect(),
            ..WebSecurity::default()
        };
        let auth = Authenticator::default();
        assert!(auth.allows(&security, Some(&basic("alice", "right"))).await);
        assert!(!auth.allows(&security, Some(&basic("alice", "wrong"))).await);
        assert!(!auth.allows(&security, Some(&basic("bob", "right"))).await);
        assert!(!auth.allows(&security, None).await);
        assert!(
            !auth
                .allows(&security, Some(&HeaderValue::from_static("Bearer x")))
                .await
        );
        assert_eq!(auth.cache.lock().expect("lock").len(), 3);
        // Cached answers stay right.
        assert!(auth.allows(&security, Some(&basic("alice", "right"))).await);
        assert!(!auth.allows(&security, Some(&basic("bob", "right"))).await);
        assert!(auth.allows(&WebSecurity::default(), None).await);
    }

    #[test]
    fn example_web_config_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/web-config.example.yml");
        let security = WebSecurity::load(&path).expect("the example loads");
        assert!(security.tls.is_none());
        let hash = &security.users["prometheus"];
        assert!(
            bcrypt::verify("change-me", hash).unwrap_or(false),
            "the comment names the password"
        );
        assert_eq!(security.headers.len(), 3);
    }

    #[test]
    fn cache_keys_do_not_collide_on_shifted_separators() {
        assert_ne!(cache_key("a:b", "h", "c"), cache_key("a", "h", "b:c"));
    }
}
