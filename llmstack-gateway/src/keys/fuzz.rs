//! Fuzz targets (property tests) for the API keys file: [`parse`] and [`build`] on
//! generated YAML and plain files (valid, and with one mistake each) and on arbitrary
//! text, and [`bearer`] on arbitrary header values.
//!
//! Invariants: nothing panics; every key of a valid file authenticates (through
//! [`ApiKeys::authenticate`]) to its tenant with its priority and limits; an invalid
//! file is refused with a message that never contains a key.
//!
//! `LLMSTACK_FUZZ_CASES` sets the number of cases per target (default 2000, the CI
//! short mode); `scripts/fuzz` runs the long mode in release.

use http::HeaderValue;
use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

/// Cases per target: `LLMSTACK_FUZZ_CASES`, else 2000.
fn cases() -> u32 {
    std::env::var("LLMSTACK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(2000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The random part of a key: any printable ASCII (`plain`: without `#`, which starts
/// a comment in a plain file).
fn key_tail(plain: bool) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[A-Za-z0-9._-]{4,24}",
        2 => "[!-~]{4,24}",
        1 => vec(prop::sample::select(&['"', '\'', '`', '\\', ':', '#', '{', '[', '-', '&', '*', '!', '%', '@'][..]), 1..8)
            .prop_map(|c| c.into_iter().collect::<String>()),
    ]
    .prop_map(move |s: String| if plain { s.replace('#', "_") } else { s })
}

/// Distinct keys: `sk-<index>-<random>` (the prefix appears in no message of ours).
fn keys(n: std::ops::Range<usize>, plain: bool) -> impl Strategy<Value = Vec<String>> {
    vec(key_tail(plain), n).prop_map(|tails| {
        tails
            .into_iter()
            .enumerate()
            .map(|(i, t)| format!("sk-{i}-{t}"))
            .collect()
    })
}

/// A tenant of the file: its name (`None`: the default tenant, unlimited) and its
/// priority (as written) and limits.
#[derive(Debug, Clone)]
struct GenTenant {
    name: Option<String>,
    priority: Option<(Priority, String)>,
    rpm: Option<u64>,
    tpm: Option<u64>,
}

impl GenTenant {
    fn tenant(&self) -> Tenant {
        Tenant {
            name: self.name.as_deref().unwrap_or(DEFAULT_TENANT).into(),
            priority: self.priority.as_ref().map_or(Priority::Normal, |p| p.0),
            rpm: self.rpm,
            tpm: self.tpm,
        }
    }
}

fn limit() -> impl Strategy<Value = Option<u64>> {
    prop::option::of(prop_oneof![
        1..1000u64,
        any::<u64>().prop_map(|n| n.max(1)),
        Just(u64::MAX)
    ])
}

fn priority() -> impl Strategy<Value = (Priority, String)> {
    (
        prop::sample::select(&Priority::ALL[..]),
        prop::sample::select(&["lower", "upper", "title", "padded"][..]),
    )
        .prop_map(|(p, case)| {
            let s = p.as_str();
            let written = match case {
                "upper" => s.to_uppercase(),
                "title" => format!("{}{}", s[..1].to_uppercase(), &s[1..]),
                "padded" => format!("\" {s} \""),
                _ => s.to_owned(),
            };
            (p, written)
        })
}

/// The default tenant (unlimited, normal, maybe saying so) and up to three named ones.
fn tenants() -> impl Strategy<Value = Vec<GenTenant>> {
    let default = any::<bool>().prop_map(|say| GenTenant {
        name: None,
        priority: say.then(|| (Priority::Normal, "normal".to_owned())),
        rpm: None,
        tpm: None,
    });
    let named = vec(
        (
            "[a-z][a-z0-9_.-]{0,8}",
            prop::option::of(priority()),
            limit(),
            limit(),
        ),
        0..4,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (name, priority, rpm, tpm))| GenTenant {
                name: Some(format!("{name}{i}")),
                priority,
                rpm,
                tpm,
            })
            .collect::<Vec<_>>()
    });
    (default, named).prop_map(|(d, mut named)| {
        named.insert(0, d);
        named
    })
}

/// How an entry gives its key.
#[derive(Debug, Clone, Copy)]
enum KeyForm {
    Plain,
    Single,
    Double,
    /// Double-quoted, with spaces around the key (trimmed on load).
    Padded,
    /// `sha256:` with the hex digest, lower or upper case.
    Digest {
        upper: bool,
    },
}

/// One mistake that makes a file invalid.
#[derive(Debug, Clone, Copy)]
enum Mistake {
    /// The entry names the first key instead of its own (a mistake unless it is the
    /// first entry).
    Duplicate,
    /// `rpm: 0`.
    ZeroLimit,
    /// A key in a numeric field (serde's message quotes the value).
    KeyAsLimit,
    /// A key as an unknown field's name (serde's message quotes the name).
    KeyAsField,
    /// Both `key` and `sha256`.
    Both,
    /// A key with a space inside.
    Space,
    /// An entry of a named tenant with another `rpm` than the tenant's earlier entries
    /// (a mistake only when there are such entries).
    Conflict,
    /// A digest that is not 64 hex digits.
    BadDigest,
}

#[derive(Debug, Clone)]
struct GenFile {
    keys: Vec<String>,
    listed: Vec<String>,
    tenants: Vec<GenTenant>,
    /// Per key in the file: its tenant (an index into `tenants`), how the key is
    /// written, and a rotation of the entry's fields.
    entries: Vec<(usize, KeyForm, u8)>,
    flow: bool,
    indent: usize,
    header_comment: bool,
    mistake: Option<(Mistake, usize)>,
}

fn key_form() -> impl Strategy<Value = KeyForm> {
    prop_oneof![
        Just(KeyForm::Plain),
        Just(KeyForm::Single),
        Just(KeyForm::Double),
        Just(KeyForm::Padded),
        any::<bool>().prop_map(|upper| KeyForm::Digest { upper }),
    ]
}

fn mistake() -> impl Strategy<Value = Mistake> {
    prop::sample::select(
        &[
            Mistake::Duplicate,
            Mistake::ZeroLimit,
            Mistake::KeyAsLimit,
            Mistake::KeyAsField,
            Mistake::Both,
            Mistake::Space,
            Mistake::Conflict,
            Mistake::BadDigest,
        ][..],
    )
}

fn gen_file() -> impl Strategy<Value = GenFile> {
    (keys(1..8, false), tenants()).prop_flat_map(|(all, tenants)| {
        let n = all.len();
        (
            Just(all),
            0..=(n - 1).min(2),
            Just(tenants.clone()),
            vec((0..tenants.len(), key_form(), any::<u8>()), n),
            any::<bool>(),
            prop::sample::select(&[2usize, 4][..]),
            any::<bool>(),
            prop::option::weighted(0.3, (mistake(), any::<usize>())),
        )
            .prop_map(
                |(
                    mut all,
                    n_listed,
                    tenants,
                    mut entries,
                    flow,
                    indent,
                    header_comment,
                    mistake,
                )| {
                    // The last `n_listed` keys are listed (default tenant) rather than in
                    // the file.
                    let listed = all.split_off(all.len() - n_listed);
                    entries.truncate(all.len());
                    GenFile {
                        keys: all,
                        listed,
                        tenants,
                        entries,
                        flow,
                        indent,
                        header_comment,
                        mistake,
                    }
                },
            )
    })
}

/// `s` as a YAML scalar of `form`.
fn scalar(s: &str, form: KeyForm) -> String {
    let plain = s.starts_with("sk-")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    match form {
        KeyForm::Plain if plain => s.to_owned(),
        KeyForm::Single => format!("'{}'", s.replace('\'', "''")),
        KeyForm::Padded => format!("\"  {}  \"", s.replace('\\', "\\\\").replace('"', "\\\"")),
        _ => format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")),
    }
}

fn hex(digest: [u8; 32], upper: bool) -> String {
    let s: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    if upper { s.to_uppercase() } else { s }
}

impl GenFile {
    /// The file's text, and whether it is valid.
    fn render(&self) -> (String, bool) {
        let mut valid = true;
        let mut out = String::new();
        if self.header_comment {
            out.push_str("# API keys: sk-not-a-key\n---\n");
        }
        out.push_str("keys:\n");
        let pad = " ".repeat(self.indent);
        let mut seen_tenants = Vec::new();
        let mut entries: Vec<Vec<(String, String)>> = Vec::new();
        for (i, (key, &(t, form, order))) in self.keys.iter().zip(&self.entries).enumerate() {
            let tenant = &self.tenants[t];
            let mut fields: Vec<(String, String)> = Vec::new();
            match form {
                KeyForm::Digest { upper } => {
                    fields.push((
                        "sha256".into(),
                        hex(Sha256::digest(key.as_bytes()).into(), upper),
                    ));
                }
                form => fields.push(("key".into(), scalar(key, form))),
            }
            // The default tenant's entries may leave everything out; named tenants must
            // be named, and their settings are written on every entry.
            if let Some(name) = &tenant.name {
                fields.push(("tenant".into(), name.clone()));
            }
            if let Some((_, p)) = &tenant.priority {
                fields.push(("priority".into(), p.clone()));
            }
            if let Some(rpm) = tenant.rpm {
                fields.push(("rpm".into(), rpm.to_string()));
            }
            if let Some(tpm) = tenant.tpm {
                fields.push(("tpm".into(), tpm.to_string()));
            }
            if let Some((mistake, at)) = self.mistake
                && at % self.keys.len() == i
            {
                valid = false;
                let other = &self.keys[(i + 1) % self.keys.len()];
                match mistake {
                    Mistake::Duplicate => {
                        fields[0] = ("key".into(), scalar(&self.keys[0], KeyForm::Double));
                        // A second entry of the first key, with the first key's tenant.
                        if i == 0 {
                            valid = true;
                        }
                    }
                    Mistake::ZeroLimit => {
                        fields.retain(|(k, _)| k != "rpm");
                        fields.push(("rpm".into(), "0".into()));
                    }
                    Mistake::KeyAsLimit => {
                        fields.retain(|(k, _)| k != "tpm");
                        fields.push(("tpm".into(), scalar(other, KeyForm::Double)));
                    }
                    Mistake::KeyAsField => {
                        fields.push((scalar(other, KeyForm::Double), "1".into()));
                    }
                    Mistake::Both => {
                        if fields[0].0 == "key" {
                            let digest = Sha256::digest(other.as_bytes()).into();
                            fields.push(("sha256".into(), hex(digest, false)));
                        } else {
                            fields.push(("key".into(), scalar(other, KeyForm::Single)));
                        }
                    }
                    Mistake::Space => {
                        fields[0] = (
                            "key".into(),
                            format!("\"{} {}\"", &key[..3], &key[3..].replace(['\\', '"'], "_")),
                        );
                    }
                    Mistake::Conflict => {
                        if tenant.name.is_some() && seen_tenants.contains(&t) {
                            fields.retain(|(k, _)| k != "rpm");
                            fields.push((
                                "rpm".into(),
                                tenant.rpm.map_or(7, |r| r ^ 1).max(2).to_string(),
                            ));
                        } else {
                            valid = true;
                        }
                    }
                    Mistake::BadDigest => {
                        let h = hex(Sha256::digest(key.as_bytes()).into(), false);
                        fields[0] = ("sha256".into(), format!("\"{}\"", &h[..63]));
                    }
                }
            }
            seen_tenants.push(t);
            // A field order of its own.
            let rot = usize::from(order) % fields.len();
            fields.rotate_left(rot);
            entries.push(fields);
        }
        for fields in entries {
            if self.flow {
                let inner: Vec<String> = fields.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                out.push_str(&format!("{pad}- {{{}}}\n", inner.join(", ")));
            } else {
                for (j, (k, v)) in fields.iter().enumerate() {
                    let lead = if j == 0 { "- " } else { "  " };
                    out.push_str(&format!("{pad}{lead}{k}: {v}\n"));
                }
            }
        }
        (out, valid)
    }
}

/// The table's keys authenticate, each to its tenant.
fn authenticate_all(
    table: Table,
    listed: &[String],
    want: &[(&str, Tenant)],
    scheme: &str,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(table.len(), want.len());
    let keys = ApiKeys {
        table: Arc::new(RwLock::new(Arc::new(table))),
        loaded: Arc::default(),
        file: None,
        listed: listed.into(),
    };
    for (i, (key, tenant)) in want.iter().enumerate() {
        let mut headers = HeaderMap::new();
        if i % 2 == 0 {
            headers.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("{scheme}{key} ")).unwrap(),
            );
        } else {
            headers.insert(&X_API_KEY, HeaderValue::from_str(key).unwrap());
        }
        let got = keys.authenticate(&headers);
        prop_assert_eq!(got.as_ref().ok(), Some(tenant), "key {:?}", key);
    }
    let mut headers = HeaderMap::new();
    headers.insert(&X_API_KEY, HeaderValue::from_static("sk-not-a-key"));
    prop_assert!(keys.authenticate(&headers).is_err());
    Ok(())
}

/// A message that shows none of the keys, nor six characters in a row of their random
/// part.
fn check_secret(message: &str, keys: &[String]) -> Result<(), TestCaseError> {
    for key in keys {
        prop_assert!(!message.contains(key.as_str()), "{message:?} shows {key:?}");
        let tail = key.splitn(3, '-').nth(2).unwrap_or_default().as_bytes();
        for w in tail.windows(6) {
            prop_assert!(
                memmem(message.as_bytes(), w).is_none(),
                "{:?} shows {:?} of {:?}",
                message,
                String::from_utf8_lossy(w),
                key
            );
        }
    }
    Ok(())
}

fn memmem(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

proptest! {
    #![proptest_config(config())]

    /// Generated YAML files: valid ones load, every key to its tenant; files with a
    /// mistake are refused without showing a key.
    #[test]
    fn fuzz_keys_yaml(
        file in gen_file(),
        scheme in prop::sample::select(&["Bearer ", "bearer ", "BEARER  ", "Bearer \t"][..]),
    ) {
        let (text, valid) = file.render();
        let all: Vec<String> = file.keys.iter().chain(&file.listed).cloned().collect();
        let parsed = parse(&text);
        if valid {
            prop_assert!(parsed.is_ok(), "{:?}: {:?}", text, parsed.err());
        }
        match build(Some(&text), &file.listed) {
            Ok(table) => {
                prop_assert!(valid, "an invalid file was accepted: {text}");
                let want: Vec<(&str, Tenant)> = file
                    .keys
                    .iter()
                    .zip(&file.entries)
                    .map(|(k, (t, _, _))| (k.as_str(), file.tenants[*t].tenant()))
                    .chain(file.listed.iter().map(|k| (k.as_str(), file.tenants[0].tenant())))
                    .collect();
                authenticate_all(table, &file.listed, &want, scheme)?;
            }
            Err(e) => {
                prop_assert!(!valid, "{text}: {e}");
                check_secret(&e.to_string(), &all)?;
            }
        }
    }

    /// Generated plain files (one key per line, comments, blank lines): every key
    /// loads, of the default tenant.
    #[test]
    fn fuzz_keys_plain(
        keys in keys(1..8, true),
        comments in vec(prop::sample::select(&["", " # laptop", "\t# ci", "#"][..]), 8),
        blank in vec(prop::sample::select(&["", "\n", "# a comment\n", "   \n"][..]), 8),
        crlf in any::<bool>(),
    ) {
        let mut text = String::new();
        for (i, k) in keys.iter().enumerate() {
            text.push_str(blank[i]);
            text.push_str(&format!("  {k}{}", comments[i]));
            text.push_str(if crlf { "\r\n" } else { "\n" });
        }
        // A key ending in `:` makes the file a YAML mapping: not a plain file then.
        if keys.iter().any(|k| k.ends_with(':')) {
            let _ = build(Some(&text), &[]);
            return Ok(());
        }
        let table = build(Some(&text), &[]);
        prop_assert!(table.is_ok(), "{:?}: {:?}", text, table.err());
        let want: Vec<(&str, Tenant)> = keys
            .iter()
            .map(|k| (k.as_str(), Tenant {
                name: DEFAULT_TENANT.into(),
                priority: Priority::Normal,
                rpm: None,
                tpm: None,
            }))
            .collect();
        authenticate_all(table.unwrap_or_default(), &[], &want, "Bearer ")?;
    }

    /// Arbitrary text, and text made of the file's words: never a panic; an error
    /// never shows the `sk-` keys in it.
    #[test]
    fn fuzz_keys_text(
        text in prop_oneof![
            ".{0,80}",
            vec(prop_oneof![
                Just("keys:".to_owned()),
                Just("\n".to_owned()),
                Just("  - ".to_owned()),
                Just("key: ".to_owned()),
                Just("sha256: ".to_owned()),
                Just("tenant: ".to_owned()),
                Just("priority: ".to_owned()),
                Just("rpm: ".to_owned()),
                Just("sk-secret-1".to_owned()),
                Just("\"sk-secret-2\"".to_owned()),
                Just("{".to_owned()),
                Just("}".to_owned()),
                Just(", ".to_owned()),
                Just("#".to_owned()),
                "[0-9a-f]{0,64}",
                "[ -~]{0,4}",
            ], 0..16).prop_map(|v| v.concat()),
        ],
        listed in vec("[ -~]{0,8}", 0..2),
    ) {
        if let Err(e) = build(Some(&text), &listed) {
            let message = e.to_string();
            // A `priority` or `tenant` value is shown by design (it is not a key).
            let by_design = message.contains("priority `") || message.contains("tenant `");
            for secret in ["sk-secret-1", "sk-secret-2"].into_iter().filter(|_| !by_design) {
                prop_assert!(!message.contains(secret), "{text:?}: {message}");
            }
        }
    }

    /// Arbitrary `Authorization` values: never a panic; the key is what follows a
    /// `Bearer ` scheme (any case), trimmed.
    #[test]
    fn fuzz_bearer(
        value in prop_oneof![
            vec(any::<u8>(), 0..24),
            ("[bB][eE][aA][rR][eE][rR]", vec(any::<u8>(), 0..16))
                .prop_map(|(s, rest)| [s.as_bytes(), &rest].concat()),
        ],
    ) {
        match bearer(&value) {
            Some(key) => {
                prop_assert!(value.len() >= 7 && value[..7].eq_ignore_ascii_case(b"bearer "));
                prop_assert_eq!(key, value[7..].trim_ascii());
            }
            None => prop_assert!(value.len() < 7 || !value[..7].eq_ignore_ascii_case(b"bearer ")),
        }
    }
}

// === bugs the targets found, kept as regression tests ===

/// Found by `fuzz_keys_yaml` and `fuzz_keys_text`: the first fix redacted serde's
/// quoted parts and showed what followed a quote inside a value (serde writes `\"`) or
/// a backquote in a field name. Now none of serde's text is shown.
#[test]
fn a_value_with_a_quote_is_not_shown() {
    for text in [
        "keys:\n  - key: sk-a\n    rpm: 'sk-b\"secret-part'\n",
        "keys:\n  - key: sk-a\n    sk-b`secret-part: 1\n",
        "sk-a`secret-part: 1\n",
    ] {
        let e = build(Some(text), &[]).err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| !e.contains("secret-part")),
            "{text:?}: {e:?}"
        );
    }
}
