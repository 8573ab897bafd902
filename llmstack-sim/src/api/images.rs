//! `POST /v1/images/generations`: `n` tiny deterministic PNGs, base64 in `b64_json`. Each
//! is one flat colour drawn from the prompt and its index, 1/64 of the requested size
//! (1 to 64 pixels a side), so bodies stay small. Answered at once, without the
//! scheduler; counts in flight and honours the request faults.

use serde::Deserialize;
use serde_json::json;

use super::{EngineApp, Res, ok_json};
use crate::api::base64;
use crate::api::error::ApiError;
use crate::api::request::{parse, resolve_model};
use crate::engine::unix_now;
use crate::scheduler::splitmix;

/// Most images per request (OpenAI's limit).
const MAX_IMAGES: i64 = 10;

/// `POST /v1/images/generations`.
#[derive(Debug, Deserialize)]
struct ImageRequest {
    model: Option<String>,
    prompt: String,
    n: Option<i64>,
    size: Option<String>,
    response_format: Option<String>,
    // Typed but without effect.
    #[allow(dead_code)]
    quality: Option<String>,
    #[allow(dead_code)]
    style: Option<String>,
    #[allow(dead_code)]
    user: Option<String>,
}

/// `WxH` (or `auto`, 1024×1024) within 1..=4096 a side.
fn parse_size(size: Option<&str>) -> Result<(u32, u32), ApiError> {
    let bad = || {
        ApiError::bad_request(
            format!("size must be 'auto' or 'WxH' within 1..=4096, got {size:?}"),
            Some("size"),
        )
    };
    match size {
        None | Some("auto") => Ok((1024, 1024)),
        Some(s) => {
            let (w, h) = s.split_once('x').ok_or_else(bad)?;
            let side = |v: &str| v.parse::<u32>().ok().filter(|v| (1..=4096).contains(v));
            Ok((side(w).ok_or_else(bad)?, side(h).ok_or_else(bad)?))
        }
    }
}

impl EngineApp {
    /// `POST /v1/images/generations`.
    pub(super) async fn images(&self, body: &[u8]) -> Result<Res, ApiError> {
        let r: ImageRequest = parse(body)?;
        resolve_model(
            r.model.as_deref(),
            &self.shared.config,
            &self.shared.loras(),
        )?;
        let n = r.n.unwrap_or(1);
        if !(1..=MAX_IMAGES).contains(&n) {
            return Err(ApiError::bad_request(
                format!("n must be within 1..={MAX_IMAGES}, got {n}"),
                Some("n"),
            ));
        }
        if !matches!(r.response_format.as_deref(), None | Some("b64_json")) {
            return Err(ApiError::bad_request(
                "Only response_format 'b64_json' is supported (the simulator hosts no files)",
                Some("response_format"),
            ));
        }
        let (w, h) = parse_size(r.size.as_deref())?;
        let _load = self.admit_immediate().await?;
        let seed = r.prompt.bytes().fold(0x1357_9bdf_2468_ace0u64, |acc, b| {
            splitmix(acc ^ u64::from(b))
        });
        let data: Vec<serde_json::Value> = (0..n as u64)
            .map(|i| {
                let c = splitmix(seed ^ i).to_le_bytes();
                let png = flat_png((w / 64).max(1), (h / 64).max(1), [c[0], c[1], c[2]]);
                json!({"b64_json": base64::encode(&png)})
            })
            .collect();
        Ok(ok_json(
            &json!({"created": unix_now() as u64, "data": data}),
        ))
    }
}

/// A `w`×`h` 8-bit RGB PNG of one colour (zlib with stored blocks, no compression).
pub(crate) fn flat_png(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    // Each row: filter type 0 (none), then the pixels.
    let mut row = vec![0u8];
    for _ in 0..w {
        row.extend_from_slice(&rgb);
    }
    let raw = row.repeat(h as usize);
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8 bits, RGB, deflate, no filter, no interlace
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &zlib_stored(&raw));
    chunk(&mut png, b"IEND", &[]);
    png
}

fn chunk(png: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    png.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = png.len();
    png.extend_from_slice(kind);
    png.extend_from_slice(data);
    let crc = crc32(&png[start..]);
    png.extend_from_slice(&crc.to_be_bytes());
}

/// A zlib stream of stored (uncompressed) deflate blocks.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let mut blocks = data.chunks(0xffff).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        out.push(u8::from(blocks.peek().is_none()));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

/// CRC-32 (ISO-HDLC, as PNG uses).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_and_png_layout() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b"IEND"), 0xae42_6082);
        let png = flat_png(2, 3, [255, 0, 0]);
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR"));
        assert!(png.ends_with(b"IEND\xae\x42\x60\x82"));
        assert_eq!(&png[16..24], &[0, 0, 0, 2, 0, 0, 0, 3]);
    }

    #[test]
    fn zlib_stored_blocks_round_trip_by_hand() {
        let z = zlib_stored(b"abc");
        // header, final stored block of 3, data, adler32("abc") = 0x024d0127
        assert_eq!(
            z,
            [
                0x78, 0x01, 1, 3, 0, 0xfc, 0xff, b'a', b'b', b'c', 0x02, 0x4d, 0x01, 0x27
            ]
        );
        let big = zlib_stored(&vec![0; 70_000]);
        assert_eq!(big.len(), 2 + 5 + 65_535 + 5 + 4_465 + 4);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size(None).unwrap(), (1024, 1024));
        assert_eq!(parse_size(Some("256x512")).unwrap(), (256, 512));
        assert!(parse_size(Some("big")).is_err());
        assert!(parse_size(Some("0x10")).is_err());
    }
}
