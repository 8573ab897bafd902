use http::HeaderValue;

use super::*;

fn headers(name: &str, value: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        HeaderName::from_bytes(name.as_bytes()).unwrap(),
        HeaderValue::from_str(value).unwrap(),
    );
    h
}

fn hex(digest: [u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("llmstack-gateway-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn file(text: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new();
    let path = dir.0.join("keys");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn a_yaml_file_names_tenants_priorities_and_limits() {
    let digest: [u8; 32] = Sha256::digest(b"sk-hashed").into();
    let (_dir, path) = file(&format!(
        "keys:\n  - key: sk-acme\n    tenant: acme\n    priority: high\n    rpm: 60\n    tpm: 1000\n  - sha256: {}\n    tenant: beta\n  - key: sk-anon\n",
        hex(digest)
    ));
    let keys = ApiKeys::load(Some(&path), &[]).unwrap();
    assert_eq!(keys.len(), 3);
    let acme = keys
        .authenticate(&headers("authorization", "Bearer sk-acme"))
        .unwrap();
    assert_eq!(&*acme.name, "acme");
    assert_eq!(acme.priority, Priority::High);
    assert_eq!((acme.rpm, acme.tpm), (Some(60), Some(1000)));
    let beta = keys
        .authenticate(&headers("x-api-key", "sk-hashed"))
        .unwrap();
    assert_eq!(&*beta.name, "beta");
    assert_eq!((beta.priority, beta.rpm), (Priority::Normal, None));
    let anon = keys
        .authenticate(&headers("authorization", "bearer  sk-anon "))
        .unwrap();
    assert_eq!(&*anon.name, DEFAULT_TENANT);
}

#[test]
fn missing_wrong_and_malformed_keys_are_refused() {
    let keys = ApiKeys::load(None, &["sk-1".into(), "sk-2".into()]).unwrap();
    assert!(matches!(
        keys.authenticate(&HeaderMap::new()),
        Err(Error::Unauthorized { missing: true })
    ));
    for (name, value) in [
        ("authorization", "Bearer sk-3"),
        ("authorization", "Basic sk-1"),
        ("authorization", "Bearer "),
        ("authorization", "sk-1"),
        ("x-api-key", "sk-1x"),
    ] {
        assert!(
            matches!(
                keys.authenticate(&headers(name, value)),
                Err(Error::Unauthorized { missing: false })
            ),
            "{name}: {value}"
        );
    }
    assert!(keys.authenticate(&headers("x-api-key", "sk-2")).is_ok());
}

#[test]
fn a_plain_file_has_one_key_per_line() {
    let (_dir, path) = file("# the team's keys\nsk-a\n\n  sk-b   # laptop\n");
    let keys = ApiKeys::load(Some(&path), &["sk-c".into()]).unwrap();
    assert_eq!(keys.len(), 3);
    for k in ["sk-a", "sk-b", "sk-c"] {
        let t = keys
            .authenticate(&headers("authorization", &format!("Bearer {k}")))
            .unwrap();
        assert_eq!(&*t.name, DEFAULT_TENANT);
    }
}

#[test]
fn invalid_files_say_why_without_showing_keys() {
    let cases = [
        (
            "keys:\n  - key: sk-secret-1\n    priority: urgent\n",
            "priority `urgent`",
        ),
        (
            "keys:\n  - key: sk-secret-1\n    rpm: 0\n",
            "greater than zero",
        ),
        (
            "keys:\n  - key: sk-secret-1\n  - key: sk-secret-1\n",
            "twice",
        ),
        (
            "keys:\n  - key: sk-secret-1\n    sha256: abc\n",
            "exactly one",
        ),
        ("keys:\n  - sha256: abc\n", "64 hexadecimal"),
        (
            "keys:\n  - key: sk-secret-1\n    rpm: sk-secret-2\n",
            "not a valid keys file",
        ),
        (
            "keys:\n  - key: sk-secret-1\n    colour: red\n",
            "unknown field",
        ),
        (
            "keys:\n  - {key: sk-secret-1, tenant: t, rpm: 5}\n  - {key: sk-secret-2, tenant: t, rpm: 6}\n",
            "tenant `t`",
        ),
        ("keys: []\n", "no API key"),
        ("# nothing\n", "no API key"),
    ];
    for (text, why) in cases {
        let (_dir, path) = file(text);
        let e = ApiKeys::load(Some(&path), &[]).unwrap_err().to_string();
        assert!(e.contains(why), "{text:?}: {e}");
        assert!(!e.contains("sk-secret"), "{text:?}: {e}");
    }
    let e = ApiKeys::load(Some(Path::new("/nonexistent/keys")), &[]).unwrap_err();
    assert!(e.to_string().contains("cannot read"), "{e}");
}

#[test]
fn a_reload_replaces_the_keys_and_a_bad_one_keeps_them() {
    let (_dir, path) = file("sk-old\n");
    let keys = ApiKeys::load(Some(&path), &[]).unwrap();
    let shared = keys.clone();
    std::fs::write(&path, "sk-new\n").unwrap();
    assert_eq!(keys.reload(), Ok(1));
    assert!(shared.authenticate(&headers("x-api-key", "sk-new")).is_ok());
    assert!(
        shared
            .authenticate(&headers("x-api-key", "sk-old"))
            .is_err()
    );
    std::fs::write(&path, "keys:\n  - key: sk-x\n    priority: nope\n").unwrap();
    assert!(keys.reload().is_err());
    assert!(shared.authenticate(&headers("x-api-key", "sk-new")).is_ok());
    assert!(!format!("{shared:?}").contains("sk-"));
}

#[tokio::test]
async fn the_watch_reloads_a_changed_file() {
    let (_dir, path) = file("sk-old\n");
    let keys = ApiKeys::load(Some(&path), &[]).unwrap();
    let task = tokio::spawn(keys.watch(Duration::from_millis(20)));
    std::fs::write(&path, "sk-new\n").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while keys.authenticate(&headers("x-api-key", "sk-new")).is_err() {
        assert!(tokio::time::Instant::now() < deadline, "not reloaded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(keys.authenticate(&headers("x-api-key", "sk-old")).is_err());
    task.abort();
}

#[test]
fn hex_digests_and_what_is_wrong() {
    let digest: [u8; 32] = Sha256::digest(b"k").into();
    assert_eq!(from_hex(&hex(digest)), Some(digest));
    assert_eq!(from_hex(&hex(digest).to_uppercase()), Some(digest));
    assert_eq!(from_hex(&"g".repeat(64)), None);
    let said = what_is_wrong("invalid type: string \"sk-1\", expected `u64`");
    assert!(
        said.contains("wrong type") && !said.contains("sk-1"),
        "{said}"
    );
}
