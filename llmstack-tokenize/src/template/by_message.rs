//! A fast path for chat templates that render a plain conversation message by message:
//! fixed text before each message's content (depending on its role and on whether it is
//! the first message), the content (as is, or trimmed), fixed text after it, and a fixed
//! generation prompt. Llama 3's and ChatML's templates are such.
//!
//! Evaluating the template in minijinja costs about 2.5 µs a message (a 20-message chat:
//! 50 µs, a quarter of a KV-aware routing decision); concatenating the same strings costs
//! the copy. The format is learned from the template itself at load (single messages
//! with a marker as content), then checked: every role sequence of up to four messages,
//! and longer ones, with contents chosen to trip content-dependent templates (white
//! space at the ends, markup such as `<think>`, template syntax, non-ASCII), each
//! rendered both ways with and without the generation prompt. One difference, or one
//! render the template refuses, and the template is always evaluated. Templates that
//! read the clock (`strftime_now`) are never learned.

use super::PlainMessage;

/// The roles of a plain conversation, in [`MessageFormat::roles`] order.
const ROLES: [&str; 3] = ["system", "user", "assistant"];

/// Contents stand-ins used to learn the format.
const MARK_A: &str = "llmstackmarka";
const MARK_B: &str = "llmstackmarkb";

/// Contents of the checking conversations.
const CONTENTS: [&str; 12] = [
    "Hello there.",
    "",
    "  padded on both sides \n\n",
    "<think>reasoning</think>answer",
    "{{ not a tag }} {% raw %}",
    "café 日本語 😀",
    "\t\n",
    "line one\nline two\n",
    "[INST] user text [/INST]",
    "\u{a0}\u{3000}wide space\u{85}",
    "<|im_start|>user\nhi<|im_end|>",
    "Only text content parts are supported.",
];

/// What comes around one role's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RoleFormat {
    /// Before the content of the conversation's first message.
    first: String,
    /// Before the content of any later message.
    later: String,
    /// After the content.
    after: String,
}

/// A learned message-by-message rendering: see the [module](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MessageFormat {
    roles: [RoleFormat; 3],
    generation: String,
    trim: bool,
}

impl MessageFormat {
    /// Learns the format of the template behind `render` (a plain conversation as
    /// `(role, content)` pairs, and whether to add the generation prompt) and checks it;
    /// `None` when the template is not of this kind.
    pub(super) fn learn(
        source: &str,
        render: impl Fn(&[(&str, &str)], bool) -> Option<String>,
    ) -> Option<Self> {
        if source.contains("strftime_now") {
            return None;
        }
        let mut roles = Vec::with_capacity(ROLES.len());
        for role in ROLES {
            let alone = render(&[(role, MARK_A)], false)?;
            let (first, after) = split_once_exactly(&alone, MARK_A)?;
            let pair = render(&[("user", MARK_A), (role, MARK_B)], false)?;
            let (head, tail) = split_once_exactly(&pair, MARK_B)?;
            roles.push((
                first.to_owned(),
                head.to_owned(),
                after.to_owned(),
                tail.to_owned(),
            ));
        }
        // The second message's prefix is the pair's head less the first user message.
        let user_first = &roles[1].0;
        let user_after = &roles[1].2;
        let lead = format!("{user_first}{MARK_A}{user_after}");
        let mut formats = Vec::with_capacity(ROLES.len());
        for (first, head, after, tail) in &roles {
            if *tail != *after {
                return None;
            }
            let later = head.strip_prefix(&lead)?.to_owned();
            formats.push(RoleFormat {
                first: first.clone(),
                later,
                after: after.clone(),
            });
        }
        let roles: [RoleFormat; 3] = formats.try_into().ok()?;
        let without = render(&[("user", MARK_A)], false)?;
        let generation = render(&[("user", MARK_A)], true)?
            .strip_prefix(&without)?
            .to_owned();
        let padded = format!(" \n{MARK_A}\t ");
        let kept = render(&[("user", &padded)], false)?;
        let trim = if kept == format!("{}{padded}{}", roles[1].first, roles[1].after) {
            false
        } else if kept == without {
            true
        } else {
            return None;
        };
        let format = Self {
            roles,
            generation,
            trim,
        };
        format.agrees(&render).then_some(format)
    }

    /// Whether this format renders every checking conversation as `render` does.
    fn agrees(&self, render: &impl Fn(&[(&str, &str)], bool) -> Option<String>) -> bool {
        let mut conversations: Vec<Vec<(&str, &str)>> = Vec::new();
        let mut next = 0usize;
        let mut content = || {
            next += 1;
            CONTENTS[next % CONTENTS.len()]
        };
        for len in 1..=4u32 {
            for mut code in 0..ROLES.len().pow(len) {
                let mut conv = Vec::new();
                for _ in 0..len {
                    conv.push((ROLES[code % ROLES.len()], content()));
                    code /= ROLES.len();
                }
                conversations.push(conv);
            }
        }
        // Longer chats, alternating as real ones do, with and without a system message.
        for len in [6, 9, 13] {
            for system in [false, true] {
                let mut conv = Vec::new();
                if system {
                    conv.push(("system", content()));
                }
                for i in 0..len {
                    conv.push((ROLES[1 + i % 2], content()));
                }
                conversations.push(conv);
            }
        }
        conversations.iter().all(|conv| {
            [false, true].into_iter().all(|generation| {
                let messages = PlainMessage::from_pairs(conv);
                let fast = self.render(&messages, generation);
                fast.is_some() && fast == render(conv, generation)
            })
        })
    }

    /// `messages` rendered; `None` when one is not a plain role with text content, or
    /// for an empty conversation (the template decides those).
    pub(super) fn render(
        &self,
        messages: &[PlainMessage<'_>],
        add_generation_prompt: bool,
    ) -> Option<String> {
        if messages.is_empty() {
            return None;
        }
        let mut parts = Vec::with_capacity(messages.len());
        let mut len = 0;
        for (i, message) in messages.iter().enumerate() {
            let role = &self.roles[ROLES.iter().position(|r| *r == message.role)?];
            let content = message.content.as_deref()?;
            let content = if self.trim { content.trim() } else { content };
            let before = if i == 0 { &role.first } else { &role.later };
            len += before.len() + content.len() + role.after.len();
            parts.push((before.as_str(), content, role.after.as_str()));
        }
        let mut out = String::with_capacity(len + self.generation.len());
        for (before, content, after) in parts {
            out.push_str(before);
            out.push_str(content);
            out.push_str(after);
        }
        if add_generation_prompt {
            out.push_str(&self.generation);
        }
        Some(out)
    }
}

/// `text` before and after the one occurrence of `mark`; `None` unless exactly one.
fn split_once_exactly<'t>(text: &'t str, mark: &str) -> Option<(&'t str, &'t str)> {
    let (before, after) = text.split_once(mark)?;
    (!after.contains(mark)).then_some((before, after))
}

#[cfg(test)]
mod tests;
