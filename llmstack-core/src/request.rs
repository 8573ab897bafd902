//! The routing facts of one request, read from the raw body without re-serialising it.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::Error;

/// What a router needs to know about one request: the model, whether it streams, the
/// session key and (lazily parsed) the prompt.
///
/// Borrowed from the request body: building one parses the top level of the JSON once,
/// keeps raw slices of the interesting fields and skips the rest without allocating.
/// The body itself is forwarded as is; only an alias rewrite
/// ([`RouteRequest::body_with_model`]) builds new bytes, by splicing the model value.
#[derive(Clone, Default)]
pub struct RouteRequest<'a> {
    model: Option<Cow<'a, str>>,
    /// Byte range of the `model` value (quotes included) in the body.
    model_span: Option<(usize, usize)>,
    stream: bool,
    session: Option<Cow<'a, str>>,
    /// OpenAI's `user` field: the session key when no session field or header is set.
    user: Option<Cow<'a, str>>,
    prompt: Option<&'a RawValue>,
    messages: Option<&'a RawValue>,
    input: Option<&'a RawValue>,
    /// vLLM's `cache_salt`: separates this request's prefix-cache key space.
    cache_salt: Option<Cow<'a, str>>,
    /// The Responses API's `previous_response_id`: the response this one follows.
    previous_response: Option<Cow<'a, str>>,
}

/// Which API a request belongs to, as far as its prompt goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// `prompt` (completions).
    Completion,
    /// `messages` (chat completions, Anthropic messages).
    Chat,
    /// `input` (embeddings, responses).
    Input,
}

/// A view of the prompt of one request.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptView<'a> {
    /// Completions `prompt`.
    Completion(Prompt<'a>),
    /// Chat `messages`.
    Chat(Vec<Message<'a>>),
    /// Embeddings (or responses) `input`.
    Input(Prompt<'a>),
}

/// A completion prompt or embeddings input: the four shapes the OpenAI API accepts.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt<'a> {
    /// One string.
    Text(Cow<'a, str>),
    /// A batch of strings.
    Texts(Vec<Cow<'a, str>>),
    /// One prompt as token ids.
    Tokens(Vec<u32>),
    /// A batch of token-id prompts.
    TokenLists(Vec<Vec<u32>>),
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Message<'a> {
    /// `system`, `user`, `assistant`, `tool`, …
    #[serde(borrow)]
    pub role: Cow<'a, str>,
    /// The content (absent or `null` for some assistant tool-call messages).
    #[serde(borrow, default)]
    pub content: Content<'a>,
}

/// The content of a chat message.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Content<'a> {
    /// No content.
    #[default]
    None,
    /// A plain string.
    Text(Cow<'a, str>),
    /// A list of typed parts (text, image_url, input_audio, …).
    Parts(Vec<Part<'a>>),
}

/// One part of a multi-part chat content.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Part<'a> {
    /// The part type (`text`, `image_url`, …).
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// The text of a `text` part.
    #[serde(borrow, default, deserialize_with = "opt_text")]
    pub text: Option<Cow<'a, str>>,
}

// === impl RouteRequest ===

impl<'a> RouteRequest<'a> {
    /// Reads the routing facts from a JSON request body.
    ///
    /// `session_field` names a top-level body field holding the session key (the
    /// production-stack convention: the same name as the session header).
    ///
    /// Fails with a 400 [`Error::BadRequest`] when the body is not JSON, not an object,
    /// or `model` / `stream` have the wrong type. A missing `model` is not an error here
    /// (see [`RouteRequest::model`]). Cost: one pass over the body, no allocation unless
    /// a string needs unescaping.
    pub fn from_json(body: &'a [u8], session_field: Option<&str>) -> Result<Self, Error> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(if first.is_none() {
                Error::bad_request("The request body is empty; expected a JSON object.", None)
            } else if serde_json::from_slice::<IgnoredAny>(body).is_ok() {
                Error::bad_request("The request body must be a JSON object.", None)
            } else {
                Error::bad_request("The request body is not valid JSON.", None)
            });
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        let fields = Fields {
            session_field,
            body_start: body.as_ptr() as usize,
        }
        .deserialize(&mut de)
        .and_then(|req| de.end().map(|()| req))
        .map_err(|e| {
            let param = match e.classify() {
                serde_json::error::Category::Data => field_of(&e),
                _ => None,
            };
            Error::bad_request(format!("The request body is not valid: {e}"), param)
        })?;
        Ok(fields)
    }

    /// Routing facts of a `multipart/form-data` request (audio): the model and stream
    /// flag come from the form fields.
    pub fn from_form(model: Option<Cow<'a, str>>, stream: bool) -> Self {
        Self {
            model,
            stream,
            ..Self::default()
        }
    }

    /// The requested model, if the body names one.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// Whether the client asked for a streamed response.
    pub fn stream(&self) -> bool {
        self.stream
    }

    /// The session key: set from a header, else the session body field, else the
    /// OpenAI `user` field.
    pub fn session_key(&self) -> Option<&str> {
        self.session.as_deref().or(self.user.as_deref())
    }

    /// Length in bytes of the raw prompt field (`messages`, `prompt` or `input`, the one
    /// [`RouteRequest::kind`] reports): a free size estimate before any parsing.
    pub fn prompt_len(&self) -> usize {
        self.messages
            .or(self.prompt)
            .or(self.input)
            .map_or(0, |raw| raw.get().len())
    }

    /// Sets the session key (a header value takes precedence over the body field).
    pub fn set_session_key(&mut self, key: Cow<'a, str>) {
        self.session = Some(key);
    }

    /// Which prompt field the body carries, if any (`messages` wins over `prompt`, which
    /// wins over `input`).
    pub fn kind(&self) -> Option<RequestKind> {
        if self.messages.is_some() {
            Some(RequestKind::Chat)
        } else if self.prompt.is_some() {
            Some(RequestKind::Completion)
        } else if self.input.is_some() {
            Some(RequestKind::Input)
        } else {
            None
        }
    }

    /// The prompt, parsed on demand from its raw slice. `None` when the body has no
    /// prompt field or it has a shape this view does not model (e.g. responses `input`
    /// items); routing then simply has no prompt to go on.
    pub fn prompt_view(&self) -> Option<PromptView<'a>> {
        match self.kind()? {
            RequestKind::Chat => {
                let raw = self.messages?;
                serde_json::from_str(raw.get()).ok().map(PromptView::Chat)
            }
            RequestKind::Completion => parse_prompt(self.prompt?).map(PromptView::Completion),
            RequestKind::Input => parse_prompt(self.input?).map(PromptView::Input),
        }
    }

    /// The raw JSON of the chat `messages` field, when the body has one (a tokenizer
    /// renders it with the model's chat template).
    pub fn messages_raw(&self) -> Option<&'a str> {
        self.messages.map(RawValue::get)
    }

    /// The raw JSON of the completions `prompt` field, when the body has one.
    pub fn prompt_raw(&self) -> Option<&'a str> {
        self.prompt.map(RawValue::get)
    }

    /// The Responses API's `previous_response_id`: a follow-up of that response, which
    /// only the engine that created it can resolve.
    pub fn previous_response_id(&self) -> Option<&str> {
        self.previous_response.as_deref()
    }

    /// vLLM's `cache_salt` (a string; other scalars read as their JSON text): requests
    /// with different salts never share cached blocks.
    pub fn cache_salt(&self) -> Option<&str> {
        self.cache_salt.as_deref()
    }

    /// The body with the `model` value replaced by `model` (alias rewriting): the bytes
    /// before and after the value are copied unchanged. `None` when the body had no
    /// `model` (or `body` is not the body this request was read from).
    pub fn body_with_model(&self, body: &[u8], model: &str) -> Option<Vec<u8>> {
        let (start, end) = self.model_span?;
        let (head, tail) = (body.get(..start)?, body.get(end..)?);
        let value = serde_json::to_string(model).ok()?;
        let mut out = Vec::with_capacity(head.len() + value.len() + tail.len());
        out.extend_from_slice(head);
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(tail);
        Some(out)
    }
}

impl fmt::Debug for RouteRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteRequest")
            .field("model", &self.model)
            .field("stream", &self.stream)
            .field("session", &self.session.is_some())
            .field("kind", &self.kind())
            .finish()
    }
}

/// The top-level visitor: a seed, because the session field name is only known at run time.
struct Fields<'s> {
    session_field: Option<&'s str>,
    body_start: usize,
}

impl<'de> DeserializeSeed<'de> for Fields<'_> {
    type Value = RouteRequest<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Fields<'_> {
    type Value = RouteRequest<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut req = RouteRequest::default();
        while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
            match &*key {
                "model" => {
                    let raw: &'de RawValue = map.next_value()?;
                    let Text(model) = serde_json::from_str(raw.get())
                        .map_err(|_| de::Error::custom("field `model`: expected a string"))?;
                    let start = (raw.get().as_ptr() as usize).wrapping_sub(self.body_start);
                    req.model_span = Some((start, start + raw.get().len()));
                    req.model = Some(model);
                }
                "stream" => {
                    let stream: Option<bool> = map
                        .next_value()
                        .map_err(|_| de::Error::custom("field `stream`: expected a boolean"))?;
                    req.stream = stream.unwrap_or(false);
                }
                "prompt" => req.prompt = Some(map.next_value()?),
                "messages" => req.messages = Some(map.next_value()?),
                "input" => req.input = Some(map.next_value()?),
                k if Some(k) == self.session_field => {
                    req.session = scalar_key(map.next_value()?);
                }
                "user" => req.user = scalar_key(map.next_value()?),
                "cache_salt" => req.cache_salt = scalar_key(map.next_value()?),
                "previous_response_id" => req.previous_response = scalar_key(map.next_value()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(req)
    }
}

/// A session key from a JSON scalar: a string's text, or the JSON text of a number or
/// boolean; `null` is no key.
fn scalar_key(raw: &RawValue) -> Option<Cow<'_, str>> {
    match serde_json::from_str::<Text<'_>>(raw.get()) {
        Ok(Text(s)) => Some(s),
        Err(_) if raw.get() != "null" => Some(Cow::Borrowed(raw.get())),
        Err(_) => None,
    }
}

/// Which field a data error is about, from serde_json's message.
fn field_of(e: &serde_json::Error) -> Option<&'static str> {
    let msg = e.to_string();
    ["model", "stream"]
        .into_iter()
        .find(|f| msg.contains(&format!("field `{f}`")))
}

/// A string that borrows from the input when it has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Text<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

fn opt_text<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    Ok(<Option<Text<'de>> as serde::Deserialize>::deserialize(d)?.map(|t| t.0))
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Content<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A direct visitor (not an untagged enum, which buffers the whole value first):
        // the content is most of a long prompt.
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Content<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, a list of content parts, or null")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(s)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Content::None)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Content::None)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut parts = Vec::new();
                while let Some(part) = seq.next_element::<Part<'a>>()? {
                    parts.push(part);
                }
                Ok(Content::Parts(parts))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

fn parse_prompt(raw: &RawValue) -> Option<Prompt<'_>> {
    let text = raw.get();
    match text.as_bytes().first()? {
        b'"' => serde_json::from_str::<Text<'_>>(text)
            .ok()
            .map(|t| Prompt::Text(t.0)),
        b'[' => {
            let items: Vec<&RawValue> = serde_json::from_str(text).ok()?;
            match items.first().and_then(|r| r.get().as_bytes().first()) {
                None => Some(Prompt::Texts(Vec::new())),
                Some(b'"') => items
                    .iter()
                    .map(|r| serde_json::from_str::<Text<'_>>(r.get()).ok().map(|t| t.0))
                    .collect::<Option<_>>()
                    .map(Prompt::Texts),
                Some(b'[') => serde_json::from_str(text).ok().map(Prompt::TokenLists),
                Some(_) => serde_json::from_str(text).ok().map(Prompt::Tokens),
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
