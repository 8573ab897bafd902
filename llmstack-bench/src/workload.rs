//! Workloads: what each request asks, reproducible from a seed.

use serde_json::{Value, json};

/// A workload shape.
#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    /// Every request: a prompt of `prompt_tokens` words, `answer_tokens` generated.
    Synthetic {
        /// Prompt length (words; the simulator counts about one token per word).
        prompt_tokens: usize,
        /// `max_tokens` of each request.
        answer_tokens: usize,
    },
    /// `groups` shared prefixes of `prefix_tokens` words, each followed by one of
    /// `suffixes` different endings of `suffix_tokens` words.
    SharedPrefix {
        /// Number of distinct prefixes.
        groups: usize,
        /// Distinct endings per prefix.
        suffixes: usize,
        /// Prefix length.
        prefix_tokens: usize,
        /// Ending length.
        suffix_tokens: usize,
        /// `max_tokens` of each request.
        answer_tokens: usize,
    },
    /// Requests replayed from a trace, each at its own time.
    Replay(std::sync::Arc<[TraceEntry]>),
    /// production-stack's multi-round QA: `users` users, each with `rounds` questions; a
    /// system prompt of `system_tokens` shared by all, a per-user history of
    /// `history_tokens`, answers of `answer_tokens`; each round appends the answer and a
    /// new question, so histories grow.
    MultiRoundQa {
        /// Number of users.
        users: usize,
        /// Questions per user.
        rounds: usize,
        /// Shared system prompt length.
        system_tokens: usize,
        /// Per-user context length.
        history_tokens: usize,
        /// `max_tokens` of each answer.
        answer_tokens: usize,
    },
}

/// One line of a JSONL trace: `{"timestamp": 0.25, "prompt": "…" | "messages": […],
/// "max_tokens": 64, "session": "…"}` (`timestamp` in seconds from the start).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct TraceEntry {
    /// When to send it, in seconds from the start of the run.
    pub timestamp: f64,
    /// A single user message…
    #[serde(default)]
    pub prompt: Option<String>,
    /// …or whole chat messages.
    #[serde(default)]
    pub messages: Option<Vec<Value>>,
    /// `max_tokens`.
    pub max_tokens: usize,
    /// The session (`x-user-id`), if any.
    #[serde(default)]
    pub session: Option<String>,
}

/// Reads a JSONL trace; fails on the first line that is not a [`TraceEntry`] (with its
/// line number), or on an entry with neither `prompt` nor `messages`.
pub fn read_trace(text: &str) -> Result<Vec<TraceEntry>, TraceError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let line_no = i + 1;
            let entry: TraceEntry = serde_json::from_str(line).map_err(|e| TraceError::Json {
                line: line_no,
                source: e,
            })?;
            if entry.prompt.is_none() && entry.messages.is_none() {
                return Err(TraceError::NoPrompt { line: line_no });
            }
            if !(0.0..=1e7).contains(&entry.timestamp) {
                return Err(TraceError::Timestamp { line: line_no });
            }
            Ok(entry)
        })
        .collect()
}

/// Why [`read_trace`] refused a trace: the first bad line (1-based) and what is wrong.
#[derive(Debug)]
pub enum TraceError {
    /// The line is not a JSON [`TraceEntry`].
    Json {
        /// The line.
        line: usize,
        /// Why.
        source: serde_json::Error,
    },
    /// The entry has neither `prompt` nor `messages`.
    NoPrompt {
        /// The line.
        line: usize,
    },
    /// `timestamp` is not between 0 and 1e7 seconds.
    Timestamp {
        /// The line.
        line: usize,
    },
}

impl std::fmt::Display for TraceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Json { line, source } => write!(f, "trace line {line}: {source}"),
            Self::NoPrompt { line } => write!(f, "trace line {line}: needs `prompt` or `messages`"),
            Self::Timestamp { line } => {
                write!(f, "trace line {line}: `timestamp` must be 0 to 1e7 seconds")
            }
        }
    }
}

impl std::error::Error for TraceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Json { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// One request's content: chat messages, the answer length and the session (user) id.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// Chat messages.
    pub messages: Vec<Value>,
    /// `max_tokens`.
    pub max_tokens: usize,
    /// The session, sent as the `x-user-id` header (multi-round QA users, trace sessions).
    pub session: Option<String>,
}

/// One multi-round QA user: its history grows with every answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    user: usize,
    round: usize,
    rounds: usize,
    answer_tokens: usize,
    messages: Vec<Value>,
}

/// `n` words drawn from a small vocabulary with `rng` (about one token each).
fn words(rng: &mut fastrand::Rng, n: usize) -> String {
    const VOCAB: &[&str] = &[
        "the", "model", "answers", "every", "question", "with", "care", "and", "some", "detail",
        "about", "cache", "blocks", "tokens", "engines", "route", "fast", "story", "happy", "end",
    ];
    (0..n)
        .map(|_| VOCAB[rng.usize(..VOCAB.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

// === impl Workload ===

impl Workload {
    /// The `i`-th request of a synthetic or shared-prefix workload, the same for the same
    /// `seed` and `i`. Multi-round QA requests come from [`Workload::conversations`].
    pub fn prompt(&self, seed: u64, i: usize) -> Option<Prompt> {
        match *self {
            Workload::Synthetic {
                prompt_tokens,
                answer_tokens,
            } => {
                let mut rng =
                    fastrand::Rng::with_seed(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                Some(Prompt {
                    messages: vec![
                        json!({"role": "user", "content": words(&mut rng, prompt_tokens)}),
                    ],
                    max_tokens: answer_tokens,
                    session: None,
                })
            }
            Workload::SharedPrefix {
                groups,
                suffixes,
                prefix_tokens,
                suffix_tokens,
                answer_tokens,
            } => {
                let group = i % groups.max(1);
                let suffix = (i / groups.max(1)) % suffixes.max(1);
                let prefix = words(
                    &mut fastrand::Rng::with_seed(seed ^ group as u64),
                    prefix_tokens,
                );
                let ending = words(
                    &mut fastrand::Rng::with_seed(
                        seed ^ ((group as u64) << 32 | suffix as u64 | 1 << 63),
                    ),
                    suffix_tokens,
                );
                Some(Prompt {
                    messages: vec![
                        json!({"role": "user", "content": format!("{prefix} {ending}")}),
                    ],
                    max_tokens: answer_tokens,
                    session: None,
                })
            }
            Workload::Replay(ref trace) => trace.get(i).map(|e| Prompt {
                messages: e.messages.clone().unwrap_or_else(|| {
                    vec![json!({"role": "user", "content": e.prompt.clone().unwrap_or_default()})]
                }),
                max_tokens: e.max_tokens,
                session: e.session.clone(),
            }),
            Workload::MultiRoundQa { .. } => None,
        }
    }

    /// The users of a multi-round QA workload (empty for the other shapes).
    pub fn conversations(&self, seed: u64) -> Vec<Conversation> {
        let Workload::MultiRoundQa {
            users,
            rounds,
            system_tokens,
            history_tokens,
            answer_tokens,
        } = *self
        else {
            return Vec::new();
        };
        let system = words(&mut fastrand::Rng::with_seed(seed), system_tokens);
        (0..users)
            .map(|user| {
                let history = words(
                    &mut fastrand::Rng::with_seed(seed ^ (user as u64 + 1) << 20),
                    history_tokens,
                );
                Conversation {
                    user,
                    round: 0,
                    rounds,
                    answer_tokens,
                    messages: vec![
                        json!({"role": "system", "content": system}),
                        json!({"role": "user", "content": format!("I am user {user}. {history}")}),
                        json!({"role": "assistant", "content": "Noted."}),
                    ],
                }
            })
            .collect()
    }
}

// === impl Conversation ===

impl Conversation {
    /// The next question with the whole history so far, or `None` after the last round.
    pub fn next_prompt(&mut self) -> Option<Prompt> {
        if self.round >= self.rounds {
            return None;
        }
        self.round += 1;
        self.messages.push(json!({"role": "user",
            "content": format!("Here's question #{}: can you tell me a new long story with a happy ending?", self.round)}));
        Some(Prompt {
            messages: self.messages.clone(),
            max_tokens: self.answer_tokens,
            session: Some(format!("user-{}", self.user)),
        })
    }

    /// Appends the answer to the last question (the history grows by it).
    pub fn record_answer(&mut self, text: &str) {
        self.messages
            .push(json!({"role": "assistant", "content": text}));
    }

    /// Characters of the shared system prompt.
    pub fn system_chars(&self) -> usize {
        self.messages
            .first()
            .and_then(|m| m["content"].as_str())
            .map_or(0, str::len)
    }

    /// The user's id.
    pub fn user(&self) -> usize {
        self.user
    }

    /// Messages in the history so far.
    pub fn history_len(&self) -> usize {
        self.messages.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_replay_as_written() {
        let trace = read_trace(
            "{\"timestamp\": 0.5, \"prompt\": \"hi\", \"max_tokens\": 3, \"session\": \"s1\"}\n\n{\"timestamp\": 1, \"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": 1}\n",
        )
        .unwrap();
        assert_eq!(trace.len(), 2);
        let w = Workload::Replay(trace.into());
        let first = w.prompt(0, 0).unwrap();
        assert_eq!(first.messages[0]["content"], "hi");
        assert_eq!(
            (first.max_tokens, first.session.as_deref()),
            (3, Some("s1"))
        );
        assert_eq!(w.prompt(0, 1).unwrap().messages[0]["content"], "x");
        assert!(w.prompt(0, 2).is_none());
        assert!(
            read_trace("{\"timestamp\": 0, \"max_tokens\": 1}")
                .unwrap_err()
                .to_string()
                .contains("line 1")
        );
        assert!(read_trace("nope").is_err());
    }

    #[test]
    fn the_same_seed_gives_the_same_requests() {
        let w = Workload::Synthetic {
            prompt_tokens: 20,
            answer_tokens: 5,
        };
        assert_eq!(w.prompt(7, 3), w.prompt(7, 3));
        assert_ne!(w.prompt(7, 3), w.prompt(7, 4));
        assert_ne!(w.prompt(7, 3), w.prompt(8, 3));
    }

    #[test]
    fn shared_prefix_groups_share_exactly_their_prefix() {
        let w = Workload::SharedPrefix {
            groups: 3,
            suffixes: 4,
            prefix_tokens: 30,
            suffix_tokens: 5,
            answer_tokens: 1,
        };
        let text = |i| {
            w.prompt(1, i).unwrap().messages[0]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let prefix = |t: &str| t.split(' ').take(30).collect::<Vec<_>>().join(" ");
        assert_eq!(prefix(&text(0)), prefix(&text(3)), "same group");
        assert_ne!(text(0), text(3), "different endings");
        assert_ne!(prefix(&text(0)), prefix(&text(1)), "different groups");
        assert_eq!(text(0), text(12), "12 distinct requests, then they repeat");
    }

    #[test]
    fn multi_round_histories_grow_by_each_answer_and_question() {
        let w = Workload::MultiRoundQa {
            users: 2,
            rounds: 3,
            system_tokens: 50,
            history_tokens: 10,
            answer_tokens: 8,
        };
        let mut users = w.conversations(5);
        assert_eq!(users.len(), 2);
        assert_eq!(users, w.conversations(5), "seeded");
        let system = |p: &Prompt| p.messages[0]["content"].clone();
        let first = users[0].next_prompt().unwrap();
        let other = users[1].next_prompt().unwrap();
        assert_eq!(
            system(&first),
            system(&other),
            "the system prompt is shared"
        );
        assert_ne!(
            first.messages[1], other.messages[1],
            "histories are per user"
        );
        assert_eq!(first.messages.len(), 4);
        users[0].record_answer("once upon a time");
        let second = users[0].next_prompt().unwrap();
        assert_eq!(second.messages.len(), 6, "answer and new question appended");
        assert_eq!(second.messages[4]["content"], "once upon a time");
        assert_eq!(&second.messages[..4], &first.messages[..]);
        users[0].record_answer("the end");
        assert!(users[0].next_prompt().is_some());
        assert!(users[0].next_prompt().is_none(), "three rounds");
        assert_eq!(second.session.as_deref(), Some("user-0"));
    }
}
