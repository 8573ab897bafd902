//! vLLM's `--chat-template-content-format auto`: whether a template gets message content
//! as strings or as lists of parts.
//!
//! vLLM parses the template and looks for a `for` loop over a message's `content` (the
//! message being the target of a loop over `messages` or over a variable set from it), or
//! over a variable named `content`. Found: "openai" (every content becomes a list of
//! `{"type": "text", "text": …}` parts); not found: "string" (text parts joined with
//! newlines). This module does the same search over the template's `{% for %}` and
//! `{% set %}` tags with a small tokenizer instead of a full Jinja parser.

/// How vLLM hands message content to a chat template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentFormat {
    /// Content is a string: text parts joined with `"\n"`.
    String,
    /// Content is a list of `{"type": "text", "text": …}` parts (a string becomes one).
    OpenAi,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok<'a> {
    Ident(&'a str),
    Str(String),
    Punct(char),
    Other,
}

struct Stmt<'a> {
    /// `for`: the target names (more than one for `for a, b in …`), `set`: one name.
    targets: Vec<&'a str>,
    expr: Vec<Tok<'a>>,
    is_for: bool,
}

/// Detects the content format of a template as vLLM does.
pub(crate) fn detect(source: &str) -> ContentFormat {
    let stmts = statements(source);
    // Names bound to `messages` (or a slice, filter of it), transitively through `set`.
    let mut messages_vars = vec!["messages"];
    let mut i = 0;
    while i < messages_vars.len() {
        let related = messages_vars[i];
        for s in stmts.iter().filter(|s| !s.is_for) {
            if access(&s.expr, related, None) {
                let name = s.targets[0];
                if !messages_vars.contains(&name) {
                    messages_vars.push(name);
                }
            }
        }
        i += 1;
    }
    let mut message_vars = Vec::new();
    for s in stmts.iter().filter(|s| s.is_for) {
        if messages_vars.iter().any(|v| access(&s.expr, v, None)) {
            if s.targets.len() != 1 {
                // vLLM asserts a plain name here and falls back to its default.
                return ContentFormat::String;
            }
            message_vars.push(s.targets[0]);
        }
    }
    let loops_over_content = stmts.iter().filter(|s| s.is_for).any(|s| {
        message_vars
            .iter()
            .any(|v| access(&s.expr, v, Some("content")))
            || s.expr == [Tok::Ident("content")]
    });
    if loops_over_content {
        ContentFormat::OpenAi
    } else {
        ContentFormat::String
    }
}

/// Whether `expr` is `var` (or `var.key` / `var['key']`), possibly sliced, filtered or
/// tested: vLLM's `_is_var_or_elems_access`.
fn access(expr: &[Tok<'_>], var: &str, key: Option<&str>) -> bool {
    // A filter or a test applies to everything on its left at the top level.
    let mut depth = 0i32;
    let mut end = expr.len();
    for (i, t) in expr.iter().enumerate() {
        match t {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => depth -= 1,
            Tok::Punct('|') | Tok::Ident("is") if depth == 0 => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let mut expr = &expr[..end];
    // Trailing slices: `x[1:]`, `x[:-1]`.
    while let Some(Tok::Punct(']')) = expr.last() {
        let Some(open) = matching_open(expr) else {
            return false;
        };
        let inner = &expr[open + 1..expr.len() - 1];
        if !inner.contains(&Tok::Punct(':')) {
            break;
        }
        expr = &expr[..open];
    }
    match (key, expr) {
        (None, [Tok::Ident(name)]) => *name == var,
        (Some(key), [Tok::Ident(name), Tok::Punct('.'), Tok::Ident(attr)]) => {
            *name == var && *attr == key
        }
        (
            Some(key),
            [
                Tok::Ident(name),
                Tok::Punct('['),
                Tok::Str(s),
                Tok::Punct(']'),
            ],
        ) => *name == var && s == key,
        _ => false,
    }
}

fn matching_open(expr: &[Tok<'_>]) -> Option<usize> {
    let mut depth = 0;
    for i in (0..expr.len()).rev() {
        match expr[i] {
            Tok::Punct(']') => depth += 1,
            Tok::Punct('[') => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// The `for` and `set` statements of a template, in order.
fn statements(source: &str) -> Vec<Stmt<'_>> {
    let mut out = Vec::new();
    let mut rest = source;
    let mut in_raw = false;
    while let Some(pos) = rest.find(['{']) {
        let after = &rest[pos..];
        if after.starts_with("{#") {
            rest = after.find("#}").map_or("", |end| &after[end + 2..]);
            continue;
        }
        if let Some(body) = after.strip_prefix("{{") {
            rest = tag_len(body, b'}').map_or("", |len| &body[len + 2..]);
            continue;
        }
        let Some(body) = after.strip_prefix("{%") else {
            rest = &after[1..];
            continue;
        };
        let Some(len) = tag_len(body, b'%') else {
            break;
        };
        let inner = body[..len]
            .trim_start_matches(['-', '+'])
            .trim_end_matches(['-', '+']);
        rest = &body[len + 2..];
        let toks = lex(inner);
        match toks.first() {
            Some(Tok::Ident("raw")) => in_raw = true,
            Some(Tok::Ident("endraw")) => in_raw = false,
            _ if in_raw => {}
            Some(Tok::Ident("for")) => {
                let Some(in_at) = toks.iter().position(|t| *t == Tok::Ident("in")) else {
                    continue;
                };
                let targets = toks[1..in_at]
                    .iter()
                    .filter_map(|t| {
                        if let Tok::Ident(n) = t {
                            Some(*n)
                        } else {
                            None
                        }
                    })
                    .collect::<Vec<_>>();
                let mut expr = toks[in_at + 1..].to_vec();
                // `for x in xs if cond` / `recursive`: the iterable ends there.
                let mut depth = 0i32;
                if let Some(cut) = expr.iter().position(|t| {
                    match t {
                        Tok::Punct('(' | '[' | '{') => depth += 1,
                        Tok::Punct(')' | ']' | '}') => depth -= 1,
                        _ => {}
                    }
                    depth == 0 && matches!(t, Tok::Ident("if" | "recursive"))
                }) {
                    expr.truncate(cut);
                }
                if !targets.is_empty() {
                    out.push(Stmt {
                        targets,
                        expr,
                        is_for: true,
                    });
                }
            }
            Some(Tok::Ident("set")) => {
                if let [_, Tok::Ident(name), Tok::Punct('='), expr @ ..] = toks.as_slice() {
                    out.push(Stmt {
                        targets: vec![*name],
                        expr: expr.to_vec(),
                        is_for: false,
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// Length of a tag's body up to its closing `%}` (`close` = `%`) or `}}`, skipping string
/// literals.
fn tag_len(body: &str, close: u8) -> Option<usize> {
    let bytes = body.as_bytes();
    let mut i = 0;
    let mut quote = None;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(_) if b == b'\\' => i += 1,
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'\'' || b == b'"' => quote = Some(b),
            None if b == close && bytes.get(i + 1) == Some(&b'}') => return Some(i),
            None => {}
        }
        i += 1;
    }
    None
}

fn lex(text: &str) -> Vec<Tok<'_>> {
    let mut toks = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c.is_whitespace() {
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if d.is_alphanumeric() || d == '_' {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            toks.push(Tok::Ident(&text[i..end]));
        } else if c == '\'' || c == '"' {
            let mut s = String::new();
            while let Some((_, d)) = chars.next() {
                match d {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            s.push(e);
                        }
                    }
                    d if d == c => break,
                    d => s.push(d),
                }
            }
            toks.push(Tok::Str(s));
        } else if c.is_ascii_digit() {
            while chars
                .peek()
                .is_some_and(|&(_, d)| d.is_ascii_alphanumeric() || d == '.')
            {
                chars.next();
            }
            toks.push(Tok::Other);
        } else {
            toks.push(Tok::Punct(c));
        }
    }
    toks
}

#[cfg(test)]
mod tests {
    use super::{ContentFormat, detect};

    #[test]
    fn detects_loops_over_content() {
        let openai = [
            "{% for message in messages %}{% for part in message['content'] %}{{ part.text }}{% endfor %}{% endfor %}",
            "{%- for m in messages[1:] -%}{%- for p in m.content | selectattr('type', 'equalto', 'text') -%}x{%- endfor -%}{%- endfor -%}",
            "{% set loop_messages = messages %}{% for message in loop_messages if message.role != 'x' %}{% for c in message[\"content\"] %}{% endfor %}{% endfor %}",
            "{% macro render(content) %}{% for item in content %}{{ item }}{% endfor %}{% endmacro %}",
        ];
        for t in openai {
            assert_eq!(detect(t), ContentFormat::OpenAi, "{t}");
        }
        let string = [
            "{% for message in messages %}{{ message['content'] | trim }}{% endfor %}",
            "{# {% for p in message['content'] %} #}{% for message in messages %}{{ message.content }}{% endfor %}",
            "{% for message in messages %}{% for tc in message.tool_calls %}{% endfor %}{% endfor %}",
            "{% for message in messages %}{% raw %}{% for p in message.content %}{% endraw %}{% endfor %}",
            "{% for m in other %}{% for p in m.content %}{% endfor %}{% endfor %}",
            "{{ '%}' }}{% for message in messages %}{% set x = '{% for p in message.content %}' %}{% endfor %}",
        ];
        for t in string {
            assert_eq!(detect(t), ContentFormat::String, "{t}");
        }
    }
}
