//! [`ApiKeys`]: the keys clients may present, each naming its tenant; read from a file
//! (YAML or one key per line) and from a list, reloaded when the file changes.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use foldhash::fast::RandomState;
use http::HeaderMap;
use http::header::{self, HeaderName};
use llmstack_core::{Error, Priority, Tenant};
use llmstack_metrics::names;
use sha2::{Digest, Sha256};

/// `x-api-key`: where Anthropic's SDK puts the key.
pub static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The tenant of keys given without one (a plain list, or a YAML entry with no
/// `tenant`).
pub const DEFAULT_TENANT: &str = "default";

/// The API keys the router accepts, each with its [`Tenant`]. Cheap to clone (clones
/// share the table, so a reload is seen by all).
///
/// Keys are held as SHA-256 digests and a presented key is looked up by its digest:
/// the time a lookup takes does not depend on how much of a stored key a guess
/// matches, and neither the keys nor their digests are ever logged (`Debug` shows the
/// count). Sources:
///
/// - a file ([`ApiKeys::load`]): YAML `keys:` entries with `key` (or `sha256`, the
///   key's hex digest), `tenant`, `priority` (`high`, `normal`, `low`), `rpm`, `tpm`;
///   or plain text, one key per line (`#` starts a comment), each of tenant
///   [`DEFAULT_TENANT`];
/// - a list of keys (e.g. from `--api-keys`), tenant [`DEFAULT_TENANT`].
///
/// Entries of one tenant must agree on its priority and limits; the same key twice is
/// an error.
#[derive(Clone)]
pub struct ApiKeys {
    table: Arc<RwLock<Arc<Table>>>,
    /// The SHA-256 of the file contents the table was loaded from.
    loaded: Arc<Mutex<[u8; 32]>>,
    file: Option<PathBuf>,
    listed: Arc<[String]>,
}

/// Digest → tenant.
type Table = HashMap<[u8; 32], Tenant, RandomState>;

/// Why keys could not be loaded. Never contains a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysError(String);

/// One entry of a YAML keys file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    key: Option<String>,
    sha256: Option<String>,
    tenant: Option<String>,
    priority: Option<String>,
    rpm: Option<u64>,
    tpm: Option<u64>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    keys: Vec<Entry>,
}

// === impl ApiKeys ===

impl ApiKeys {
    /// The keys of `file` (if any) and `listed`; fails on an unreadable or invalid file,
    /// on an invalid key, or when there is no key at all.
    pub fn load(file: Option<&Path>, listed: &[String]) -> Result<Self, KeysError> {
        let keys = Self {
            table: Arc::default(),
            loaded: Arc::default(),
            file: file.map(Path::to_owned),
            listed: listed.into(),
        };
        keys.reload()?;
        Ok(keys)
    }

    /// Re-reads the file and replaces the keys; on failure the keys stay as they were.
    /// Returns how many keys are loaded.
    pub fn reload(&self) -> Result<usize, KeysError> {
        let text = match &self.file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                KeysError(format!("cannot read API keys file {}: {e}", path.display()))
            })?),
            None => None,
        };
        let table = build(text.as_deref(), &self.listed).map_err(|e| match &self.file {
            Some(path) => KeysError(format!("API keys file {}: {}", path.display(), e.0)),
            None => e,
        })?;
        let n = table.len();
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
        *self.loaded.lock().unwrap_or_else(PoisonError::into_inner) =
            Sha256::digest(text.unwrap_or_default()).into();
        metrics::gauge!(names::API_KEYS).set(n as f64);
        Ok(n)
    }

    /// How many keys are accepted.
    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    /// Whether no key is accepted (never, once loaded).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tenant of the key in `headers` (`Authorization: Bearer <key>`, else
    /// `x-api-key: <key>`), or [`Error::Unauthorized`]: `missing` when neither header
    /// is there. Each refusal is counted in `llmstack_auth_failures_total{reason}`.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Tenant, Error> {
        let presented = match headers.get(header::AUTHORIZATION) {
            Some(v) => bearer(v.as_bytes()),
            None => match headers.get(&X_API_KEY) {
                Some(v) => Some(v.as_bytes()),
                None => {
                    metrics::counter!(names::AUTH_FAILURES, "reason" => "missing").increment(1);
                    return Err(Error::Unauthorized { missing: true });
                }
            },
        };
        let found = presented.filter(|k| !k.is_empty()).and_then(|key| {
            let digest: [u8; 32] = Sha256::digest(key).into();
            self.snapshot().get(&digest).cloned()
        });
        found.ok_or_else(|| {
            metrics::counter!(names::AUTH_FAILURES, "reason" => "invalid").increment(1);
            Error::Unauthorized { missing: false }
        })
    }

    /// Re-reads the file every `every` and reloads the keys when its contents differ
    /// from those last loaded (counted in `llmstack_api_key_reloads_total{result}`; a file that cannot be read
    /// or is invalid leaves the keys as they were, and is logged without its
    /// contents). Runs forever; returns at once without a file.
    pub fn watch(&self, every: Duration) -> impl Future<Output = ()> + Send + 'static {
        let keys = self.clone();
        async move {
            let Some(path) = keys.file.clone() else {
                return;
            };
            // The contents of a file that failed to load, not to try again until it changes.
            let mut failed = None;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now: Option<[u8; 32]> = std::fs::read(&path)
                    .ok()
                    .map(|text| Sha256::digest(text).into());
                let loaded = *keys.loaded.lock().unwrap_or_else(PoisonError::into_inner);
                if now == Some(loaded) || now == failed {
                    continue;
                }
                failed = None;
                match keys.reload() {
                    Ok(n) => {
                        metrics::counter!(names::API_KEY_RELOADS, "result" => "ok").increment(1);
                        tracing::info!(keys = n, file = %path.display(), "API keys reloaded");
                    }
                    Err(e) => {
                        metrics::counter!(names::API_KEY_RELOADS, "result" => "error").increment(1);
                        tracing::error!(error = %e, "API keys not reloaded; the previous keys stay");
                        failed = now;
                    }
                }
            }
        }
    }

    fn snapshot(&self) -> Arc<Table> {
        Arc::clone(&self.table.read().unwrap_or_else(PoisonError::into_inner))
    }
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeys")
            .field("keys", &self.len())
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// The key of an `Authorization: Bearer <key>` value (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

// === impl KeysError ===

impl fmt::Display for KeysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeysError {}

/// The table of a keys file's `text` (YAML with `keys:`, or one key per line) and the
/// `listed` keys.
fn build(text: Option<&str>, listed: &[String]) -> Result<Table, KeysError> {
    let mut entries = Vec::new();
    if let Some(text) = text {
        entries = parse(text)?;
    }
    entries.extend(listed.iter().map(|k| plain(k.clone())));
    let mut table = Table::default();
    let mut tenants: HashMap<Arc<str>, Tenant> = HashMap::new();
    for (n, entry) in entries.into_iter().enumerate() {
        let at = |msg: String| KeysError(format!("key #{}: {msg}", n + 1));
        let digest = match (entry.key, entry.sha256) {
            (Some(key), None) => {
                let key = key.trim();
                if key.is_empty() || key.bytes().any(|b| !b.is_ascii_graphic()) {
                    return Err(at("a key must be printable ASCII without spaces".into()));
                }
                Sha256::digest(key.as_bytes()).into()
            }
            (None, Some(hex)) => from_hex(hex.trim())
                .ok_or_else(|| at("`sha256` must be 64 hexadecimal digits".into()))?,
            _ => return Err(at("give exactly one of `key` and `sha256`".into())),
        };
        let name: Arc<str> = entry.tenant.as_deref().unwrap_or(DEFAULT_TENANT).into();
        let priority = match entry.priority {
            Some(p) => p.parse::<Priority>().map_err(at)?,
            None => Priority::Normal,
        };
        if entry.rpm == Some(0) || entry.tpm == Some(0) {
            return Err(at("`rpm` and `tpm` must be greater than zero".into()));
        }
        let tenant = Tenant {
            name: Arc::clone(&name),
            priority,
            rpm: entry.rpm,
            tpm: entry.tpm,
        };
        if let Some(known) = tenants.get(&name)
            && *known != tenant
        {
            return Err(at(format!(
                "tenant `{name}` is given another priority or other limits than in an earlier entry"
            )));
        }
        tenants.insert(name, tenant.clone());
        if table.insert(digest, tenant).is_some() {
            return Err(at("the same key is listed twice".into()));
        }
    }
    if table.is_empty() {
        return Err(KeysError("no API key given".into()));
    }
    Ok(table)
}

/// The entries of a keys file: YAML with `keys:`, or plain lines.
fn parse(text: &str) -> Result<Vec<Entry>, KeysError> {
    if let Ok(serde_yaml_ng::Value::Mapping(_)) = serde_yaml_ng::from_str(text) {
        let file: KeysFile = serde_yaml_ng::from_str(text).map_err(|e| {
            // serde's messages may quote the value at fault, which may be a key.
            let at = e
                .location()
                .map(|l| format!(" at line {} column {}", l.line(), l.column()))
                .unwrap_or_default();
            KeysError(format!(
                "not a valid keys file{at}: {}",
                what_is_wrong(&e.to_string())
            ))
        })?;
        return Ok(file.keys);
    }
    Ok(text
        .lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .map(|key| plain(key.to_owned()))
        .collect())
}

/// A key of the default tenant, unlimited.
fn plain(key: String) -> Entry {
    Entry {
        key: Some(key),
        sha256: None,
        tenant: None,
        priority: None,
        rpm: None,
        tpm: None,
    }
}

/// What serde's `message` says is wrong, in words of ours: serde quotes the value or
/// the field name at fault, and either may be a key, so none of its text is shown.
fn what_is_wrong(message: &str) -> &'static str {
    if message.contains("unknown field") {
        "an unknown field (an entry has key or sha256, tenant, priority, rpm, tpm)"
    } else if message.contains("missing field") {
        "a missing field (the file needs `keys:`, a list of entries)"
    } else if message.contains("duplicate field") {
        "a field given twice in one entry"
    } else if message.contains("invalid type") || message.contains("invalid value") {
        "a value of the wrong type (rpm and tpm are whole numbers, the others strings)"
    } else {
        "not YAML of the expected shape (`keys:`, a list of entries)"
    }
}

/// 32 bytes from 64 hexadecimal digits.
fn from_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let digit = |b: u8| char::from(b).to_digit(16);
        *byte = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
