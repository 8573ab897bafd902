//! The benchmark's conversation: English-ish prose from a fixed vocabulary, a system
//! prompt, and a 20-message chat as JSON and as a request body.

use super::MODEL;

/// The vocabulary of [`prose`], space-separated.
const WORDS: &str = "the a system request model engine cache token prefix block router latency memory \
     queue batch server client answer question data value result function error time user \
     page file line table index key network policy cluster node service version build \
     test because however which would should could might about after before between \
     through under over into with without from for and but or not only also more less \
     most some every each other same different small large fast slow simple complex \
     important useful possible likely clear recent previous next first last new old good \
     better best is are was were be been has have had do does did make makes take takes \
     use uses run runs read write send receive store remove match measure explain \
     describe consider compare improve reduce increase keep find show see know think want \
     need we you they it this that these those there here when where how why what while \
     until again already still often usually rarely probably exactly roughly quickly \
     carefully in on at of to by as if than then so very too just even well all any many \
     much few several two three ten hundred thousand percent second minute hour day week \
     year people team project issue design document example reason problem solution \
     change update release feature bug fix performance throughput scheduler worker thread \
     process kernel driver device storage disk weather garden river mountain coffee \
     kitchen history music language";

/// English-ish sentences of at least `chars` characters (no quotes or backslashes, so
/// they go into JSON as they are).
pub(crate) fn prose(rng: &mut fastrand::Rng, chars: usize) -> String {
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let mut out = String::with_capacity(chars + 128);
    while out.len() < chars {
        let n = rng.usize(6..18);
        for w in 0..n {
            let word = words[rng.usize(..words.len())];
            if w == 0 {
                let mut c = word.chars();
                if let Some(first) = c.next() {
                    out.extend(first.to_uppercase());
                    out.push_str(c.as_str());
                }
            } else {
                out.push_str(word);
            }
            if w + 1 < n {
                out.push_str(if rng.u8(..12) == 0 { ", " } else { " " });
            }
        }
        out.push_str(match rng.u8(..8) {
            0 => "? ",
            1 => "! ",
            _ => ". ",
        });
        if rng.u8(..10) == 0 {
            out.push_str("\\n\\n"); // a paragraph break, JSON-escaped
        }
    }
    out.truncate(out.trim_end().len());
    out
}

/// The conversation: a system prompt, then user and assistant turns alternating; 20
/// messages, the last one a user's.
pub(crate) struct Chat {
    pub(crate) messages: Vec<(&'static str, String)>,
}

impl Chat {
    pub(crate) fn new(seed: u64, turn_chars: usize) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut messages = vec![("system", system_prompt())];
        for i in 0..19 {
            if i % 2 == 0 {
                messages.push(("user", prose(&mut rng, turn_chars * 2 / 3)));
            } else {
                messages.push(("assistant", prose(&mut rng, turn_chars * 4 / 3)));
            }
        }
        Self { messages }
    }

    /// The JSON array of the first `n` messages; `replace` gives other contents for
    /// some of them (by position).
    pub(crate) fn json(&self, n: usize, replace: &[(usize, &str)]) -> String {
        let mut out = String::from("[");
        for (i, (role, content)) in self.messages[..n].iter().enumerate() {
            let content = replace
                .iter()
                .find(|(j, _)| *j == i)
                .map_or(content.as_str(), |(_, c)| c);
            if i > 0 {
                out.push(',');
            }
            out.push_str(&format!(r#"{{"role":"{role}","content":"{content}"}}"#));
        }
        out.push(']');
        out
    }

    /// A chat-completions body for the first `n` messages.
    pub(crate) fn body(&self, n: usize, replace: &[(usize, &str)]) -> Vec<u8> {
        format!(
            r#"{{"model":"{MODEL}","stream":true,"max_tokens":512,"messages":{}}}"#,
            self.json(n, replace)
        )
        .into_bytes()
    }
}

fn system_prompt() -> String {
    let mut rng = fastrand::Rng::with_seed(7);
    format!(
        "You are a helpful assistant for an engineering team. {}",
        prose(&mut rng, 1_500)
    )
}
