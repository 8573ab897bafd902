//! vLLM's KV-event wire format read into [`llmstack_core::kv`] types: the three-frame
//! ZMQ message and the msgpack batch `[ts, events, dp_rank]`, with events as tagged maps
//! (vLLM ≥ 0.24) or tagged arrays (≤ 0.23).
//!
//! The reader walks the bytes once with no intermediate value tree (millions of blocks
//! a second on one core). It never panics, and it allocates at most one element per
//! remaining input byte whatever a length prefix claims.

use std::fmt;

use llmstack_core::kv::{BlockRemoved, BlockStored, ExtraKey, KvBatch, KvEvent, Medium};
use rmp::Marker;

use self::reader::{Reader, Res};

mod reader;

/// How deep lists may nest inside a block's `extra_keys` (vLLM's are two deep).
const MAX_DEPTH: u32 = 16;

/// Bytes of the shortest event kept: `["AllBlocksCleared"]`.
const MIN_EVENT_LEN: usize = 18;

/// A decoded batch and the number of events it held that this build does not know
/// (their type is neither `BlockStored`, `BlockRemoved` nor `AllBlocksCleared`); those
/// are left out of `batch.events`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decoded {
    /// The batch, unknown events left out.
    pub batch: KvBatch,
    /// Events skipped for an unknown type.
    pub skipped: usize,
}

/// Why a payload or message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    offset: usize,
    kind: DecodeErrorKind,
}

/// What was wrong with the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The input ended inside a value.
    Truncated,
    /// A value of another type than the one named was found.
    Expected(&'static str),
    /// A number outside the named field's range (a negative or over-large token id).
    OutOfRange(&'static str),
    /// An event lacks the named field, which has no default.
    Missing(&'static str),
    /// Lists nested too deeply inside `extra_keys`.
    TooDeep,
    /// Bytes follow the batch.
    TrailingBytes,
    /// A ZMQ message that is not `[topic, 8-byte sequence number, payload]`.
    Frames,
}

/// Decodes one msgpack batch, as [`decode`] does, without the count of skipped events.
///
/// # Errors
/// As [`decode`].
pub fn decode_batch(payload: &[u8]) -> Result<KvBatch, DecodeError> {
    decode(payload).map(|d| d.batch)
}

/// Decodes one msgpack batch: `[ts, events, dp_rank]`, or `[ts, events]` from vLLM
/// before ~0.10 (rank 0); elements after the third are ignored.
///
/// Each event is a map with a `"type"` key (keys in any order, unknown keys ignored,
/// absent optional keys defaulted) or an array with the type first and the fields in
/// vLLM's declaration order (absent trailing fields defaulted, extra ones ignored).
/// Events of an unknown type are skipped and counted. A block hash may be an integer
/// (unsigned, or negative and read as its two's-complement `u64`) or a 32-byte digest
/// as bytes or string (its last eight bytes, big-endian, as vLLM publishes by default).
/// An absent or nil `medium` is [`Medium::Gpu`]; `full_attention` holds unless
/// `kv_cache_spec_kind` names another kind than `"full_attention"`.
///
/// Costs one pass over the bytes; allocates the events' vectors.
///
/// # Errors
/// When the payload is not such a batch: truncated, a value of the wrong type, a token
/// id outside `u32`, an event without its `type` or a required field (`block_hashes`;
/// for `BlockStored` also `token_ids` and `block_size`), or bytes after the batch.
pub fn decode(payload: &[u8]) -> Result<Decoded, DecodeError> {
    let mut r = Reader::new(payload);
    let n = r.array("a batch [ts, events, dp_rank]")?;
    if n < 2 {
        return Err(r.error_at(0, DecodeErrorKind::Expected("a batch of 2 or 3 elements")));
    }
    let ts = r.float("ts (a number)")?;
    let count = r.array("the event list")?;
    let mut events = Vec::with_capacity(r.capacity(count, MIN_EVENT_LEN));
    let mut skipped = 0;
    for _ in 0..count {
        match r.event()? {
            Some(event) => events.push(event),
            None => skipped += 1,
        }
    }
    let dp_rank = if n >= 3 {
        r.opt_u32("dp_rank")?.unwrap_or(0)
    } else {
        0
    };
    for _ in 3..n {
        r.skip()?;
    }
    if r.remaining() > 0 {
        return Err(r.error(DecodeErrorKind::TrailingBytes));
    }
    Ok(Decoded {
        batch: KvBatch {
            ts,
            events,
            dp_rank,
        },
        skipped,
    })
}

/// Splits one published ZMQ message into its topic, sequence number and payload.
///
/// A replay answer seen by a DEALER socket has an empty frame first: pass the frames
/// after it.
///
/// # Errors
/// [`DecodeErrorKind::Frames`] when there are not exactly three frames or the second is
/// not eight bytes.
pub fn decode_message<B: AsRef<[u8]>>(frames: &[B]) -> Result<(&[u8], u64, &[u8]), DecodeError> {
    let frames_error = DecodeError {
        offset: 0,
        kind: DecodeErrorKind::Frames,
    };
    let [topic, seq, payload] = frames else {
        return Err(frames_error);
    };
    let seq = <[u8; 8]>::try_from(seq.as_ref()).map_err(|_| frames_error)?;
    Ok((topic.as_ref(), u64::from_be_bytes(seq), payload.as_ref()))
}

/// One event's fields, by name; both layouts fill it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Type,
    BlockHashes,
    ParentBlockHash,
    TokenIds,
    BlockSize,
    Medium,
    LoraName,
    ExtraKeys,
    GroupIdx,
    SpecKind,
    /// A field read by nobody (`lora_id`, `locality`, `session_id`, …).
    Other,
}

/// `BlockStored` fields in vLLM's declaration order (array layout), after the tag.
const STORED_ORDER: [Field; 10] = [
    Field::BlockHashes,
    Field::ParentBlockHash,
    Field::TokenIds,
    Field::BlockSize,
    Field::Other, // lora_id
    Field::Medium,
    Field::LoraName,
    Field::ExtraKeys,
    Field::GroupIdx,
    Field::SpecKind,
];

/// `BlockRemoved` fields in declaration order, after the tag.
const REMOVED_ORDER: [Field; 3] = [Field::BlockHashes, Field::Medium, Field::GroupIdx];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Stored,
    Removed,
    Cleared,
    Unknown,
}

/// What one event said, whatever its type.
#[derive(Debug, Default)]
struct Fields {
    block_hashes: Option<Vec<u64>>,
    parent_block_hash: Option<u64>,
    token_ids: Option<Vec<u32>>,
    block_size: Option<u32>,
    medium: Medium,
    lora_name: Option<String>,
    extra_keys: Vec<Option<Vec<ExtraKey>>>,
    group_idx: u32,
    /// `kv_cache_spec_kind`, when given: whether it is `"full_attention"`.
    full_attention: Option<bool>,
}

// === impl DecodeError ===

impl DecodeError {
    /// Where in the payload the problem was found (0 for [`DecodeErrorKind::Frames`]).
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// What was wrong.
    pub fn kind(&self) -> DecodeErrorKind {
        self.kind
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            DecodeErrorKind::Truncated => write!(f, "truncated at byte {}", self.offset),
            DecodeErrorKind::Expected(what) => write!(f, "expected {what} at byte {}", self.offset),
            DecodeErrorKind::OutOfRange(what) => {
                write!(f, "{what} out of range at byte {}", self.offset)
            }
            DecodeErrorKind::Missing(field) => {
                write!(f, "event ending at byte {} has no {field}", self.offset)
            }
            DecodeErrorKind::TooDeep => {
                write!(f, "extra_keys nested too deep at byte {}", self.offset)
            }
            DecodeErrorKind::TrailingBytes => {
                write!(f, "bytes after the batch at byte {}", self.offset)
            }
            DecodeErrorKind::Frames => {
                f.write_str("not a [topic, 8-byte sequence number, payload] message")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

// === impl Field ===

impl Field {
    fn from_key(key: &[u8]) -> Self {
        match key {
            b"type" => Self::Type,
            b"block_hashes" => Self::BlockHashes,
            b"parent_block_hash" => Self::ParentBlockHash,
            b"token_ids" => Self::TokenIds,
            b"block_size" => Self::BlockSize,
            b"medium" => Self::Medium,
            b"lora_name" => Self::LoraName,
            b"extra_keys" => Self::ExtraKeys,
            b"group_idx" => Self::GroupIdx,
            b"kv_cache_spec_kind" => Self::SpecKind,
            _ => Self::Other,
        }
    }

    /// Whether an event of type `tag` (`None`: not known yet) reads this field.
    fn read_by(self, tag: Option<Tag>) -> bool {
        match tag {
            None | Some(Tag::Stored) => self != Self::Other,
            Some(Tag::Removed) => matches!(self, Self::BlockHashes | Self::Medium | Self::GroupIdx),
            Some(Tag::Cleared | Tag::Unknown) => false,
        }
    }
}

// === impl Tag ===

impl Tag {
    fn from_name(name: &[u8]) -> Self {
        match name {
            b"BlockStored" => Self::Stored,
            b"BlockRemoved" => Self::Removed,
            b"AllBlocksCleared" => Self::Cleared,
            _ => Self::Unknown,
        }
    }
}

// === impl Fields ===

impl Fields {
    /// The event of type `tag`, or `None` for an unknown type.
    fn into_event(self, tag: Tag) -> Result<Option<KvEvent>, DecodeErrorKind> {
        let hashes = |h: Option<Vec<u64>>| h.ok_or(DecodeErrorKind::Missing("block_hashes"));
        Ok(Some(match tag {
            Tag::Stored => KvEvent::BlockStored(BlockStored {
                block_hashes: hashes(self.block_hashes)?,
                parent_block_hash: self.parent_block_hash,
                token_ids: self
                    .token_ids
                    .ok_or(DecodeErrorKind::Missing("token_ids"))?,
                block_size: self
                    .block_size
                    .ok_or(DecodeErrorKind::Missing("block_size"))?,
                medium: self.medium,
                lora_name: self.lora_name,
                extra_keys: self.extra_keys,
                group_idx: self.group_idx,
                full_attention: self.full_attention.unwrap_or(true),
            }),
            Tag::Removed => KvEvent::BlockRemoved(BlockRemoved {
                block_hashes: hashes(self.block_hashes)?,
                medium: self.medium,
                group_idx: self.group_idx,
            }),
            Tag::Cleared => KvEvent::AllBlocksCleared,
            Tag::Unknown => return Ok(None),
        }))
    }
}

// === impl Reader: the event fields ===

impl<'a> Reader<'a> {
    /// A block hash after its marker: an integer (two's complement when negative) or
    /// bytes (the last eight, big-endian).
    fn hash_after(&mut self, start: usize, m: Marker) -> Res<u64> {
        if let Some(v) = self.int_after(m)? {
            // The low 64 bits: exact for a u64, the two's complement of a negative i64.
            return Ok(v as u64);
        }
        match self.bytes_after(m)? {
            Some(bytes) => {
                let tail = &bytes[bytes.len().saturating_sub(8)..];
                Ok(tail.iter().fold(0u64, |h, &b| (h << 8) | u64::from(b)))
            }
            None => Err(self.error_at(
                start,
                DecodeErrorKind::Expected("a block hash (int or bytes)"),
            )),
        }
    }

    fn opt_hash(&mut self) -> Res<Option<u64>> {
        let start = self.pos();
        let m = self.marker()?;
        if m == Marker::Null {
            return Ok(None);
        }
        self.hash_after(start, m).map(Some)
    }

    fn hashes(&mut self) -> Res<Vec<u64>> {
        let n = self.array("block_hashes (a list)")?;
        let mut out = Vec::with_capacity(self.capacity(n, 1));
        for _ in 0..n {
            let start = self.pos();
            let m = self.marker()?;
            out.push(self.hash_after(start, m)?);
        }
        Ok(out)
    }

    fn tokens(&mut self) -> Res<Vec<u32>> {
        let n = self.array("token_ids (a list)")?;
        let mut out = Vec::with_capacity(self.capacity(n, 1));
        for _ in 0..n {
            let start = self.pos();
            let m = self.marker()?;
            // Token ids below 128 are one byte: the common case, without the i128 path.
            let id = match m {
                Marker::FixPos(v) => u32::from(v),
                _ => match self.int_after(m)? {
                    Some(v) => u32::try_from(v).map_err(|_| {
                        self.error_at(start, DecodeErrorKind::OutOfRange("token id"))
                    })?,
                    None => {
                        return Err(self.error_at(start, DecodeErrorKind::Expected("a token id")));
                    }
                },
            };
            out.push(id);
        }
        Ok(out)
    }

    /// `extra_keys`: nil (none), or per block nil or a list of keys (a bare key is a
    /// list of one).
    fn extra_keys(&mut self) -> Res<Vec<Option<Vec<ExtraKey>>>> {
        let start = self.pos();
        let m = self.marker()?;
        if m == Marker::Null {
            return Ok(Vec::new());
        }
        let Some(n) = self.array_after(m)? else {
            return Err(self.error_at(
                start,
                DecodeErrorKind::Expected("extra_keys (a list or nil)"),
            ));
        };
        let mut out = Vec::with_capacity(self.capacity(n, 1));
        for _ in 0..n {
            let m = self.marker()?;
            out.push(match m {
                Marker::Null => None,
                _ => match self.array_after(m)? {
                    Some(k) => Some(self.key_list(k, 1)?),
                    None => Some(vec![self.extra_key_after(m, 1)?]),
                },
            });
        }
        Ok(out)
    }

    fn key_list(&mut self, n: usize, depth: u32) -> Res<Vec<ExtraKey>> {
        if depth > MAX_DEPTH {
            return Err(self.error(DecodeErrorKind::TooDeep));
        }
        let mut keys = Vec::with_capacity(self.capacity(n, 1));
        for _ in 0..n {
            let m = self.marker()?;
            keys.push(self.extra_key_after(m, depth + 1)?);
        }
        Ok(keys)
    }

    fn extra_key_after(&mut self, m: Marker, depth: u32) -> Res<ExtraKey> {
        if let Some(v) = self.int_after(m)? {
            return Ok(i64::try_from(v).map_or(ExtraKey::Other, ExtraKey::Int));
        }
        if let Some(n) = self.array_after(m)? {
            return self.key_list(n, depth).map(ExtraKey::List);
        }
        Ok(match m {
            Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => {
                let bytes = self.bytes_after(m)?.unwrap_or_default();
                ExtraKey::Text(String::from_utf8_lossy(bytes).into_owned())
            }
            Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => {
                ExtraKey::Bytes(self.bytes_after(m)?.unwrap_or_default().to_vec())
            }
            _ => {
                self.skip_after(m)?;
                ExtraKey::Other
            }
        })
    }

    fn tag(&mut self) -> Res<Tag> {
        let start = self.pos();
        let m = self.marker()?;
        match self.bytes_after(m)? {
            Some(name) => Ok(Tag::from_name(name)),
            None => {
                Err(self.error_at(start, DecodeErrorKind::Expected("an event type (a string)")))
            }
        }
    }

    /// Reads the value of `field` into `f`.
    fn field(&mut self, field: Field, f: &mut Fields) -> Res<()> {
        match field {
            Field::BlockHashes => f.block_hashes = Some(self.hashes()?),
            Field::ParentBlockHash => f.parent_block_hash = self.opt_hash()?,
            Field::TokenIds => f.token_ids = Some(self.tokens()?),
            Field::BlockSize => {
                let start = self.pos();
                let size = self.opt_u32("block_size")?;
                f.block_size = Some(size.ok_or_else(|| {
                    self.error_at(start, DecodeErrorKind::Expected("block_size"))
                })?);
            }
            Field::Medium => {
                f.medium = self.opt_str("medium")?.map_or(Medium::Gpu, |m| {
                    std::str::from_utf8(m).map_or(Medium::Other, Medium::from_name)
                });
            }
            Field::LoraName => {
                f.lora_name = self
                    .opt_str("lora_name")?
                    .map(|n| String::from_utf8_lossy(n).into_owned());
            }
            Field::ExtraKeys => f.extra_keys = self.extra_keys()?,
            Field::GroupIdx => f.group_idx = self.opt_u32("group_idx")?.unwrap_or(0),
            Field::SpecKind => {
                f.full_attention = self
                    .opt_str("kv_cache_spec_kind")?
                    .map(|k| k == b"full_attention");
            }
            Field::Type | Field::Other => self.skip()?,
        }
        Ok(())
    }

    /// One event: `Some`, or `None` for an unknown type.
    fn event(&mut self) -> Res<Option<KvEvent>> {
        let start = self.pos();
        let m = self.marker()?;
        let mut f = Fields::default();
        let tag = if let Some(n) = self.map_after(m)? {
            let mut tag = None;
            for _ in 0..n {
                let key_start = self.pos();
                let km = self.marker()?;
                let Some(key) = self.bytes_after(km)? else {
                    // A key that is not a string names no field of ours.
                    self.skip_after(km)?;
                    self.skip()?;
                    continue;
                };
                let field = Field::from_key(key);
                if field == Field::Type {
                    if tag.is_some() {
                        return Err(
                            self.error_at(key_start, DecodeErrorKind::Expected("one \"type\" key"))
                        );
                    }
                    tag = Some(self.tag()?);
                } else if field.read_by(tag) {
                    self.field(field, &mut f)?;
                } else {
                    self.skip()?;
                }
            }
            tag.ok_or_else(|| self.error(DecodeErrorKind::Missing("type")))?
        } else if let Some(n) = self.array_after(m)? {
            if n == 0 {
                return Err(self.error_at(start, DecodeErrorKind::Expected("a tagged event array")));
            }
            let tag = self.tag()?;
            let order: &[Field] = match tag {
                Tag::Stored => &STORED_ORDER,
                Tag::Removed => &REMOVED_ORDER,
                Tag::Cleared | Tag::Unknown => &[],
            };
            for i in 1..n {
                match order.get(i - 1) {
                    Some(&field) => self.field(field, &mut f)?,
                    None => self.skip()?,
                }
            }
            tag
        } else {
            return Err(self.error_at(
                start,
                DecodeErrorKind::Expected("an event (a map or an array)"),
            ));
        };
        f.into_event(tag).map_err(|kind| self.error(kind))
    }
}

#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod tests;
