//! The KV-event targets (feature `kv-events`): batches generated in every shape vLLM
//! has published (map and array events, optional fields present, nil or left out,
//! fields in any order, unknown keys and trailing elements, hashes as integers of every
//! width or as digests) decode to what was generated; arbitrary and mutated bytes never
//! make [`decode`] panic.

use llmstack_core::kv::{BlockRemoved, BlockStored, ExtraKey, KvEvent, Medium};
use llmstack_metrics::kv_events::{decode, decode_message};
use proptest::collection::vec;
use proptest::prelude::*;
use rmp::encode as enc;

use crate::{config, same};

/// An event to encode: a known one, or one of a type the decoder skips.
#[derive(Debug, Clone)]
enum Gen {
    Known(KvEvent),
    Unknown(String, Vec<Vec<u8>>),
}

/// How to write each optional or variable part of one event.
#[derive(Debug, Clone)]
struct Style {
    /// Map (`true`) or tagged array.
    map: bool,
    /// Map layout: the order of the entries (a permutation seed); array: how many
    /// optional trailing fields to write beyond those that are not defaults.
    order: Vec<usize>,
    /// Write default values explicitly (nil or their value) rather than leaving them out.
    explicit: Vec<bool>,
    /// Unknown keys (map) or trailing elements (array), as encoded values.
    extra: Vec<Vec<u8>>,
    /// How each hash is written: 0 uint, 1 negative sint when ≥ 2^63, 2 bin digest,
    /// 3 str digest.
    hash_forms: Vec<u8>,
    /// Spelling of the medium and kind strings (0 canonical, 1 lower case).
    spelling: u8,
}

/// Any msgpack value, as bytes.
fn value() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just(vec![0xc0]),
        any::<bool>().prop_map(|b| vec![if b { 0xc3 } else { 0xc2 }]),
        any::<i64>().prop_map(|v| w(|b| enc::write_sint(b, v).map(drop))),
        any::<u64>().prop_map(|v| w(|b| enc::write_uint(b, v).map(drop))),
        any::<f64>().prop_map(|v| w(|b| enc::write_f64(b, v))),
        ".{0,6}".prop_map(|s| w(|b| enc::write_str(b, &s))),
        vec(any::<u8>(), 0..6).prop_map(|v| w(|b| enc::write_bin(b, &v))),
        (any::<i8>(), vec(any::<u8>(), 0..5)).prop_map(|(t, d)| w(|b| {
            enc::write_ext_meta(b, d.len() as u32, t)?;
            b.extend_from_slice(&d);
            Ok(())
        })),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(|items| {
                let mut b = w(|b| enc::write_array_len(b, items.len() as u32).map(drop));
                items.iter().for_each(|i| b.extend_from_slice(i));
                b
            }),
            vec((inner.clone(), inner), 0..3).prop_map(|entries| {
                let mut b = w(|b| enc::write_map_len(b, entries.len() as u32).map(drop));
                for (k, v) in &entries {
                    b.extend_from_slice(k);
                    b.extend_from_slice(v);
                }
                b
            }),
        ]
    })
}

/// Runs an encoder over a fresh buffer (writes to a Vec never fail).
fn w(f: impl FnOnce(&mut Vec<u8>) -> Result<(), rmp::encode::ValueWriteError>) -> Vec<u8> {
    let mut b = Vec::new();
    f(&mut b).unwrap();
    b
}

fn extra_key() -> impl Strategy<Value = ExtraKey> {
    let leaf = prop_oneof![
        ".{0,8}".prop_map(ExtraKey::Text),
        any::<i64>().prop_map(ExtraKey::Int),
        vec(any::<u8>(), 0..8).prop_map(ExtraKey::Bytes),
        Just(ExtraKey::Other),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| vec(inner, 0..3).prop_map(ExtraKey::List))
}

fn medium() -> impl Strategy<Value = Medium> {
    prop::sample::select(&[Medium::Gpu, Medium::Cpu, Medium::Other][..])
}

fn event() -> impl Strategy<Value = Gen> {
    let stored = (
        vec(any::<u64>(), 0..5),
        any::<Option<u64>>(),
        vec(any::<u32>(), 0..40),
        any::<u32>(),
        medium(),
        prop::option::of(".{0,8}"),
        vec(prop::option::of(vec(extra_key(), 0..3)), 0..3),
        prop_oneof![Just(0u32), any::<u32>()],
        any::<bool>(),
    )
        .prop_map(|(h, p, t, size, medium, lora, keys, group, full)| {
            KvEvent::BlockStored(BlockStored {
                block_hashes: h,
                parent_block_hash: p,
                token_ids: t,
                block_size: size,
                medium,
                lora_name: lora,
                extra_keys: keys,
                group_idx: group,
                full_attention: full,
            })
        });
    let removed = (
        vec(any::<u64>(), 0..5),
        medium(),
        prop_oneof![Just(0u32), any::<u32>()],
    )
        .prop_map(|(h, medium, group)| {
            KvEvent::BlockRemoved(BlockRemoved {
                block_hashes: h,
                medium,
                group_idx: group,
            })
        });
    prop_oneof![
        4 => stored.prop_map(Gen::Known),
        3 => removed.prop_map(Gen::Known),
        1 => Just(Gen::Known(KvEvent::AllBlocksCleared)),
        1 => ("[A-Z][a-zA-Z]{0,10}", vec(value(), 0..3))
            .prop_filter("a known type", |(t, _)| {
                !matches!(t.as_str(), "BlockStored" | "BlockRemoved" | "AllBlocksCleared")
            })
            .prop_map(|(t, fields)| Gen::Unknown(t, fields)),
    ]
}

fn style() -> impl Strategy<Value = Style> {
    (
        any::<bool>(),
        vec(any::<usize>(), 12),
        vec(any::<bool>(), 12),
        vec(value(), 0..3),
        vec(0u8..4, 8),
        0u8..2,
    )
        .prop_map(
            |(map, order, explicit, extra, hash_forms, spelling)| Style {
                map,
                order,
                explicit,
                extra,
                hash_forms,
                spelling,
            },
        )
}

fn str_val(s: &str) -> Vec<u8> {
    w(|b| enc::write_str(b, s))
}

fn hash(h: u64, form: u8) -> Vec<u8> {
    let mut digest = vec![0xa5; 24];
    digest.extend_from_slice(&h.to_be_bytes());
    match form {
        1 if h >= 1 << 63 => w(|b| enc::write_sint(b, h as i64).map(drop)),
        2 => w(|b| enc::write_bin(b, &digest)),
        3 => w(|b| {
            enc::write_str_len(b, 32)?;
            b.extend_from_slice(&digest);
            Ok(())
        }),
        _ => w(|b| enc::write_uint(b, h).map(drop)),
    }
}

fn hashes(hs: &[u64], style: &Style) -> Vec<u8> {
    let mut b = w(|b| enc::write_array_len(b, hs.len() as u32).map(drop));
    for (i, h) in hs.iter().enumerate() {
        b.extend(hash(*h, style.hash_forms[i % style.hash_forms.len()]));
    }
    b
}

fn extra_key_val(k: &ExtraKey) -> Vec<u8> {
    match k {
        ExtraKey::Text(s) => str_val(s),
        ExtraKey::Int(v) => w(|b| enc::write_sint(b, *v).map(drop)),
        ExtraKey::Bytes(v) => w(|b| enc::write_bin(b, v)),
        ExtraKey::List(items) => {
            let mut b = w(|b| enc::write_array_len(b, items.len() as u32).map(drop));
            items.iter().for_each(|i| b.extend(extra_key_val(i)));
            b
        }
        ExtraKey::Other => w(|b| enc::write_f64(b, 0.5)),
    }
}

/// The fields of an event in declaration order: (key, value, is the default).
fn fields(e: &KvEvent, st: &Style) -> Vec<(&'static str, Vec<u8>, bool)> {
    let nil = vec![0xc0];
    let medium = |m: Medium| match (m, st.spelling) {
        (Medium::Gpu, 0) => str_val("GPU"),
        (Medium::Gpu, _) => nil.clone(),
        (Medium::Cpu, 0) => str_val("CPU"),
        (Medium::Cpu, _) => str_val("cpu"),
        (Medium::Other, _) => str_val("STORAGE"),
    };
    let uint = |v: u32| w(|b| enc::write_uint(b, u64::from(v)).map(drop));
    match e {
        KvEvent::BlockStored(s) => {
            let mut keys = w(|b| enc::write_array_len(b, s.extra_keys.len() as u32).map(drop));
            for block in &s.extra_keys {
                match block {
                    None => keys.push(0xc0),
                    Some(list) => keys.extend(extra_key_val(&ExtraKey::List(list.clone()))),
                }
            }
            let kind = match (s.full_attention, st.spelling) {
                (true, 0) => str_val("full_attention"),
                (true, _) => nil.clone(),
                (false, _) => str_val("sliding_window"),
            };
            vec![
                ("block_hashes", hashes(&s.block_hashes, st), false),
                (
                    "parent_block_hash",
                    s.parent_block_hash
                        .map_or(nil.clone(), |h| hash(h, st.hash_forms[0])),
                    false,
                ),
                (
                    "token_ids",
                    {
                        let mut b =
                            w(|b| enc::write_array_len(b, s.token_ids.len() as u32).map(drop));
                        s.token_ids.iter().for_each(|t| b.extend(uint(*t)));
                        b
                    },
                    false,
                ),
                ("block_size", uint(s.block_size), false),
                ("lora_id", nil.clone(), true),
                ("medium", medium(s.medium), s.medium == Medium::Gpu),
                (
                    "lora_name",
                    s.lora_name.as_deref().map_or(nil.clone(), str_val),
                    s.lora_name.is_none(),
                ),
                (
                    "extra_keys",
                    if s.extra_keys.is_empty() {
                        nil.clone()
                    } else {
                        keys
                    },
                    s.extra_keys.is_empty(),
                ),
                ("group_idx", uint(s.group_idx), s.group_idx == 0),
                ("kv_cache_spec_kind", kind, s.full_attention),
            ]
        }
        KvEvent::BlockRemoved(r) => vec![
            ("block_hashes", hashes(&r.block_hashes, st), false),
            ("medium", medium(r.medium), r.medium == Medium::Gpu),
            ("group_idx", uint(r.group_idx), r.group_idx == 0),
        ],
        KvEvent::AllBlocksCleared => Vec::new(),
    }
}

fn encode_event(g: &Gen, st: &Style) -> Vec<u8> {
    let (tag, fields) = match g {
        Gen::Known(e) => {
            let tag = match e {
                KvEvent::BlockStored(_) => "BlockStored",
                KvEvent::BlockRemoved(_) => "BlockRemoved",
                KvEvent::AllBlocksCleared => "AllBlocksCleared",
            };
            (tag.to_owned(), fields(e, st))
        }
        Gen::Unknown(tag, values) => (
            tag.clone(),
            values
                .iter()
                .map(|v| ("unknown_field", v.clone(), true))
                .collect(),
        ),
    };
    let mut out = Vec::new();
    if st.map {
        let mut entries: Vec<(Vec<u8>, Vec<u8>)> = vec![(str_val("type"), str_val(&tag))];
        for (i, (key, val, default)) in fields.into_iter().enumerate() {
            if !default || st.explicit[i % st.explicit.len()] {
                entries.push((str_val(key), val));
            }
        }
        let unknown = [
            "locality",
            "ownership",
            "session_id",
            "lookahead_token_ids",
            "kv_cache_spec_sliding_window",
        ];
        for (i, v) in st.extra.iter().enumerate() {
            entries.push((str_val(unknown[i % unknown.len()]), v.clone()));
        }
        // Any order (a Fisher–Yates shuffle driven by the style's numbers).
        for i in (1..entries.len()).rev() {
            entries.swap(i, st.order[i % st.order.len()] % (i + 1));
        }
        enc::write_map_len(&mut out, entries.len() as u32).unwrap();
        for (k, v) in entries {
            out.extend(k);
            out.extend(v);
        }
    } else {
        // Trailing defaults may be left out, a random number of them kept.
        let needed = fields.iter().rposition(|(_, _, d)| !d).map_or(0, |p| p + 1);
        let keep = needed + st.order[0] % (fields.len() - needed + 1);
        let n = 1
            + keep
            + if keep == fields.len() {
                st.extra.len()
            } else {
                0
            };
        enc::write_array_len(&mut out, n as u32).unwrap();
        out.extend(str_val(&tag));
        for (_, v, _) in fields.into_iter().take(keep) {
            out.extend(v);
        }
        if n > 1 + keep {
            st.extra.iter().for_each(|v| out.extend_from_slice(v));
        }
    }
    out
}

/// A batch: ts, events, rank, shape (`[ts, events]`, `[ts, events, rank]`, or with
/// trailing elements), trailing elements.
type Batch = (f64, Vec<(Gen, Style)>, u32, u8, Vec<Vec<u8>>);

fn batch() -> impl Strategy<Value = Batch> {
    (
        any::<f64>(),
        vec((event(), style()), 0..6),
        prop_oneof![Just(0u32), any::<u32>()],
        0u8..3,
        vec(value(), 0..2),
    )
}

proptest! {
    #![proptest_config(config())]

    /// Generated batches decode to what was generated, unknown events counted.
    #[test]
    fn fuzz_kv_batch_structured((ts, events, dp_rank, shape, trailing) in batch()) {
        // shape 0: [ts, events] (rank 0 only), 1: [ts, events, rank], 2: trailing too.
        let shape = if dp_rank != 0 && shape == 0 { 1 } else { shape };
        let len = match shape { 0 => 2, 1 => 3, _ => 3 + trailing.len() };
        let mut b = w(|b| enc::write_array_len(b, len as u32).map(drop));
        enc::write_f64(&mut b, ts).unwrap();
        enc::write_array_len(&mut b, events.len() as u32).unwrap();
        for (g, st) in &events {
            b.extend(encode_event(g, st));
        }
        if shape > 0 {
            enc::write_uint(&mut b, u64::from(dp_rank)).unwrap();
        }
        if shape > 1 {
            trailing.iter().for_each(|v| b.extend_from_slice(v));
        }
        let d = decode(&b).map_err(|e| TestCaseError::fail(format!("{e}: {b:02x?}")))?;
        let want: Vec<&KvEvent> = events
            .iter()
            .filter_map(|(g, _)| match g { Gen::Known(e) => Some(e), Gen::Unknown(..) => None })
            .collect();
        prop_assert!(same(d.batch.ts, ts));
        prop_assert_eq!(d.batch.dp_rank, dp_rank);
        prop_assert_eq!(d.skipped, events.len() - want.len());
        prop_assert_eq!(d.batch.events.iter().collect::<Vec<_>>(), want);
    }

    /// Arbitrary bytes, and bytes of msgpack's markers: never a panic.
    #[test]
    fn fuzz_kv_batch_bytes(
        bytes in prop_oneof![
            vec(any::<u8>(), 0..200),
            vec(prop::sample::select(&[
                0x90, 0x91, 0x92, 0x93, 0x80, 0x81, 0x8a, 0xa4, 0xc0, 0xc1, 0xcb, 0xcc, 0xcf,
                0xd3, 0xdc, 0xdd, 0xde, 0xdf, 0xc4, 0xd9, 0xd4, 0xc7, 0xff, 0x00, 0x10,
            ][..]), 0..200),
        ],
        frames in vec(vec(any::<u8>(), 0..10), 0..5),
    ) {
        if let Ok(d) = decode(&bytes) {
            prop_assert!(d.batch.events.len() + d.skipped <= bytes.len());
        }
        if let Ok((_, _, payload)) = decode_message(&frames) {
            prop_assert_eq!(frames.len(), 3);
            prop_assert_eq!(payload, &frames[2][..]);
        }
    }

    /// Valid batches with bytes changed, cut or inserted: never a panic.
    #[test]
    fn fuzz_kv_batch_mutated(
        (ts, events, dp_rank, _, _) in batch(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let mut b = w(|b| enc::write_array_len(b, 3).map(drop));
        enc::write_f64(&mut b, ts).unwrap();
        enc::write_array_len(&mut b, events.len() as u32).unwrap();
        for (g, st) in &events {
            b.extend(encode_event(g, st));
        }
        enc::write_uint(&mut b, u64::from(dp_rank)).unwrap();
        for (at, byte, op) in edits {
            let i = at.index(b.len() + 1);
            match op {
                0 if i < b.len() => b[i] = byte,
                1 => b.truncate(i),
                _ => b.insert(i, byte),
            }
        }
        let _ = decode(&b);
    }
}
