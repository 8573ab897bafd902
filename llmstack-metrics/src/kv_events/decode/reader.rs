//! The msgpack cursor under the decoder: markers, lengths, scalars, and skipping any
//! value without recursion. Every read checks the bytes left; nothing panics.

use rmp::Marker;

use super::{DecodeError, DecodeErrorKind};

/// A cursor over msgpack bytes.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

pub(super) type Res<T> = Result<T, DecodeError>;

// === impl Reader ===

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Where the cursor is.
    pub(super) fn pos(&self) -> usize {
        self.pos
    }

    pub(super) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// What to reserve for `n` claimed elements of at least `min_len` bytes each: no
    /// more than the bytes left can hold, whatever the length prefix says.
    pub(super) fn capacity(&self, n: usize, min_len: usize) -> usize {
        n.min(self.remaining() / min_len.max(1))
    }

    pub(super) fn error(&self, kind: DecodeErrorKind) -> DecodeError {
        self.error_at(self.pos, kind)
    }

    pub(super) fn error_at(&self, offset: usize, kind: DecodeErrorKind) -> DecodeError {
        DecodeError { offset, kind }
    }

    pub(super) fn marker(&mut self) -> Res<Marker> {
        let byte = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| self.error(DecodeErrorKind::Truncated))?;
        self.pos += 1;
        Ok(Marker::from_u8(byte))
    }

    pub(super) fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.error(DecodeErrorKind::Truncated));
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    pub(super) fn be<const N: usize>(&mut self) -> Res<[u8; N]> {
        let bytes = self.take(N)?;
        let mut out = [0; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// A length after a marker: `N` big-endian bytes.
    pub(super) fn len<const N: usize>(&mut self) -> Res<usize> {
        let bytes = self.be::<N>()?;
        let mut n: usize = 0;
        for b in bytes {
            n = (n << 8) | usize::from(b);
        }
        Ok(n)
    }

    /// The integer a marker starts, reading its payload; `None` (payload unread) for
    /// any other marker.
    pub(super) fn int_after(&mut self, m: Marker) -> Res<Option<i128>> {
        Ok(Some(match m {
            Marker::FixPos(v) => i128::from(v),
            Marker::FixNeg(v) => i128::from(v),
            Marker::U8 => i128::from(u8::from_be_bytes(self.be()?)),
            Marker::U16 => i128::from(u16::from_be_bytes(self.be()?)),
            Marker::U32 => i128::from(u32::from_be_bytes(self.be()?)),
            Marker::U64 => i128::from(u64::from_be_bytes(self.be()?)),
            Marker::I8 => i128::from(i8::from_be_bytes(self.be()?)),
            Marker::I16 => i128::from(i16::from_be_bytes(self.be()?)),
            Marker::I32 => i128::from(i32::from_be_bytes(self.be()?)),
            Marker::I64 => i128::from(i64::from_be_bytes(self.be()?)),
            _ => return Ok(None),
        }))
    }

    /// The bytes of a string or binary a marker starts; `None` for any other marker.
    pub(super) fn bytes_after(&mut self, m: Marker) -> Res<Option<&'a [u8]>> {
        let n = match m {
            Marker::FixStr(n) => usize::from(n),
            Marker::Str8 | Marker::Bin8 => self.len::<1>()?,
            Marker::Str16 | Marker::Bin16 => self.len::<2>()?,
            Marker::Str32 | Marker::Bin32 => self.len::<4>()?,
            _ => return Ok(None),
        };
        self.take(n).map(Some)
    }

    /// The element count of an array a marker starts; `None` for any other marker.
    pub(super) fn array_after(&mut self, m: Marker) -> Res<Option<usize>> {
        Ok(Some(match m {
            Marker::FixArray(n) => usize::from(n),
            Marker::Array16 => self.len::<2>()?,
            Marker::Array32 => self.len::<4>()?,
            _ => return Ok(None),
        }))
    }

    /// The entry count of a map a marker starts; `None` for any other marker.
    pub(super) fn map_after(&mut self, m: Marker) -> Res<Option<usize>> {
        Ok(Some(match m {
            Marker::FixMap(n) => usize::from(n),
            Marker::Map16 => self.len::<2>()?,
            Marker::Map32 => self.len::<4>()?,
            _ => return Ok(None),
        }))
    }

    pub(super) fn array(&mut self, what: &'static str) -> Res<usize> {
        let start = self.pos;
        let m = self.marker()?;
        self.array_after(m)?
            .ok_or_else(|| self.error_at(start, DecodeErrorKind::Expected(what)))
    }

    pub(super) fn float(&mut self, what: &'static str) -> Res<f64> {
        let start = self.pos;
        let m = self.marker()?;
        match m {
            Marker::F64 => Ok(f64::from_be_bytes(self.be()?)),
            Marker::F32 => Ok(f64::from(f32::from_be_bytes(self.be()?))),
            _ => match self.int_after(m)? {
                // Precision lost above 2^53 does not matter for a timestamp.
                Some(v) => Ok(v as f64),
                None => Err(self.error_at(start, DecodeErrorKind::Expected(what))),
            },
        }
    }

    /// An unsigned 32-bit integer, or nil.
    pub(super) fn opt_u32(&mut self, what: &'static str) -> Res<Option<u32>> {
        let start = self.pos;
        let m = self.marker()?;
        if m == Marker::Null {
            return Ok(None);
        }
        match self.int_after(m)? {
            Some(v) => u32::try_from(v)
                .map(Some)
                .map_err(|_| self.error_at(start, DecodeErrorKind::OutOfRange(what))),
            None => Err(self.error_at(start, DecodeErrorKind::Expected(what))),
        }
    }

    /// A string (or binary), or nil.
    pub(super) fn opt_str(&mut self, what: &'static str) -> Res<Option<&'a [u8]>> {
        let start = self.pos;
        let m = self.marker()?;
        if m == Marker::Null {
            return Ok(None);
        }
        self.bytes_after(m)?
            .map(Some)
            .ok_or_else(|| self.error_at(start, DecodeErrorKind::Expected(what)))
    }

    pub(super) fn skip(&mut self) -> Res<()> {
        let m = self.marker()?;
        self.skip_after(m)
    }

    /// Skips the value a marker starts, nested values included, without recursion.
    pub(super) fn skip_after(&mut self, first: Marker) -> Res<()> {
        // Values still to skip after this one; each takes at least one byte, so more
        // than remain means the input is truncated.
        let mut pending: usize = 0;
        let mut m = first;
        loop {
            let children = match m {
                Marker::FixPos(_)
                | Marker::FixNeg(_)
                | Marker::Null
                | Marker::True
                | Marker::False => 0,
                Marker::Reserved => {
                    return Err(
                        self.error_at(self.pos - 1, DecodeErrorKind::Expected("a msgpack value"))
                    );
                }
                Marker::U8 | Marker::I8 => self.take(1).map(|_| 0)?,
                Marker::U16 | Marker::I16 => self.take(2).map(|_| 0)?,
                Marker::U32 | Marker::I32 | Marker::F32 => self.take(4).map(|_| 0)?,
                Marker::U64 | Marker::I64 | Marker::F64 => self.take(8).map(|_| 0)?,
                Marker::FixExt1 => self.take(2).map(|_| 0)?,
                Marker::FixExt2 => self.take(3).map(|_| 0)?,
                Marker::FixExt4 => self.take(5).map(|_| 0)?,
                Marker::FixExt8 => self.take(9).map(|_| 0)?,
                Marker::FixExt16 => self.take(17).map(|_| 0)?,
                Marker::Ext8 => {
                    let n = self.len::<1>()?;
                    self.take(n.saturating_add(1)).map(|_| 0)?
                }
                Marker::Ext16 => {
                    let n = self.len::<2>()?;
                    self.take(n.saturating_add(1)).map(|_| 0)?
                }
                Marker::Ext32 => {
                    let n = self.len::<4>()?;
                    self.take(n.saturating_add(1)).map(|_| 0)?
                }
                Marker::FixStr(_)
                | Marker::Str8
                | Marker::Str16
                | Marker::Str32
                | Marker::Bin8
                | Marker::Bin16
                | Marker::Bin32 => self.bytes_after(m).map(|_| 0)?,
                Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => {
                    self.array_after(m)?.unwrap_or_default()
                }
                Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => {
                    self.map_after(m)?.unwrap_or_default().saturating_mul(2)
                }
            };
            pending = pending.saturating_add(children);
            if pending > self.remaining() {
                return Err(self.error(DecodeErrorKind::Truncated));
            }
            if pending == 0 {
                return Ok(());
            }
            pending -= 1;
            m = self.marker()?;
        }
    }
}
