//! What every library's settings share: the error type of an invalid setting, and the
//! helpers that read seconds and lists the way every flag does.
//!
//! Each library exposes its settings as one struct of optional values (`…Args`: flags,
//! environment variables and file keys, production-stack's names) that resolves into
//! its typed config, pushing every problem into one [`SettingErrors`], so a binary that
//! flattens them reports all problems at once.

use std::fmt;
use std::time::Duration;

/// One setting that is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    /// The setting, as its flag is spelled without dashes (`idle-timeout`).
    pub setting: &'static str,
    /// What is wrong, a sentence naming the flag and the value.
    pub message: String,
}

/// Every invalid setting found while resolving, in the order found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingErrors(pub Vec<SettingError>);

/// Longest duration a setting takes (a year): anything longer is a typo, and deadlines
/// far in the future overflow the clock.
pub const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

// === impl SettingErrors ===

impl SettingErrors {
    /// Records that `setting` is invalid, and why.
    pub fn push(&mut self, setting: &'static str, message: impl Into<String>) {
        self.0.push(SettingError {
            setting,
            message: message.into(),
        });
    }

    /// Whether nothing was found wrong.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when nothing was found wrong, else every error.
    pub fn into_result<T>(self, value: T) -> Result<T, Self> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// A duration given in seconds (`--{setting}`): `default` when not given; above 0
    /// and at most [`MAX_SECONDS`] when given, else an error is recorded and `default`
    /// returned.
    pub fn seconds(
        &mut self,
        setting: &'static str,
        value: Option<f64>,
        default: Duration,
    ) -> Duration {
        match value {
            None => default,
            Some(s) if s.is_finite() && s > 0.0 && s <= MAX_SECONDS => Duration::from_secs_f64(s),
            Some(s) => {
                self.push(
                    setting,
                    format!(
                        "--{setting} must be a number of seconds above 0 and at most {MAX_SECONDS} (a year), got {s}"
                    ),
                );
                default
            }
        }
    }
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SettingError {}

impl fmt::Display for SettingErrors {
    /// One error per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SettingErrors {}

impl From<SettingError> for SettingErrors {
    fn from(e: SettingError) -> Self {
        Self(vec![e])
    }
}

/// The entries of a list setting, trimmed, empty ones dropped.
pub fn trimmed(list: Option<Vec<String>>) -> Vec<String> {
    list.unwrap_or_default()
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Deserializes a list setting given either as a sequence or as one comma-separated
/// string (`static_backends: a,b` or `static_backends: [a, b]`), for
/// `#[serde(deserialize_with = "…")]` on an `Option<Vec<String>>`.
pub fn comma_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Either {
        One(String),
        Many(Vec<String>),
    }
    Ok(
        match <Option<Either> as serde::Deserialize>::deserialize(d)? {
            None => None,
            Some(Either::One(s)) => Some(s.split(',').map(str::to_owned).collect()),
            Some(Either::Many(v)) => Some(v),
        },
    )
}
