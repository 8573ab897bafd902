use rmp::encode as enc;

use super::*;

/// A msgpack writer for hand-made payloads (smallest encodings, as msgspec writes).
#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn arr(&mut self, n: u32) -> &mut Self {
        enc::write_array_len(&mut self.0, n).unwrap();
        self
    }
    fn map(&mut self, n: u32) -> &mut Self {
        enc::write_map_len(&mut self.0, n).unwrap();
        self
    }
    fn s(&mut self, s: &str) -> &mut Self {
        enc::write_str(&mut self.0, s).unwrap();
        self
    }
    fn bin(&mut self, b: &[u8]) -> &mut Self {
        enc::write_bin(&mut self.0, b).unwrap();
        self
    }
    fn u(&mut self, v: u64) -> &mut Self {
        enc::write_uint(&mut self.0, v).unwrap();
        self
    }
    fn i(&mut self, v: i64) -> &mut Self {
        enc::write_sint(&mut self.0, v).unwrap();
        self
    }
    fn f(&mut self, v: f64) -> &mut Self {
        enc::write_f64(&mut self.0, v).unwrap();
        self
    }
    fn nil(&mut self) -> &mut Self {
        enc::write_nil(&mut self.0).unwrap();
        self
    }
    fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn tokens(&mut self, ids: impl IntoIterator<Item = u32>) -> &mut Self {
        let ids: Vec<u32> = ids.into_iter().collect();
        self.arr(ids.len() as u32);
        for t in ids {
            self.u(u64::from(t));
        }
        self
    }
    fn bytes(&self) -> Vec<u8> {
        self.0.clone()
    }
}

const H0: u64 = 1_403_909_460_543_360_175;

fn stored(hashes: Vec<u64>, tokens: Vec<u32>) -> BlockStored {
    BlockStored {
        block_hashes: hashes,
        parent_block_hash: None,
        token_ids: tokens,
        block_size: 16,
        medium: Medium::Gpu,
        lora_name: None,
        extra_keys: Vec::new(),
        group_idx: 0,
        full_attention: true,
    }
}

/// The map-layout example of vllm.md 5.3 (vLLM ≥ 0.24), byte for byte as msgspec
/// writes it.
#[test]
fn the_map_layout_example() {
    let mut w = W::default();
    w.arr(3).f(1_795_481_992.5).arr(3);
    w.map(10)
        .s("type")
        .s("BlockStored")
        .s("block_hashes")
        .arr(1)
        .u(H0)
        .s("parent_block_hash")
        .nil()
        .s("token_ids")
        .tokens(1..=16)
        .s("block_size")
        .u(16)
        .s("lora_id")
        .nil()
        .s("medium")
        .s("GPU")
        .s("lora_name")
        .nil()
        .s("extra_keys")
        .arr(1)
        .nil()
        .s("group_idx")
        .u(0);
    w.map(4)
        .s("type")
        .s("BlockRemoved")
        .s("block_hashes")
        .arr(1)
        .u(H0)
        .s("medium")
        .s("GPU")
        .s("group_idx")
        .u(0);
    w.map(1).s("type").s("AllBlocksCleared");
    w.u(0);
    let bytes = w.bytes();
    assert_eq!(&bytes[..2], &[0x93, 0xcb]);
    assert_eq!(&bytes[10..13], &[0x93, 0x8a, 0xa4]);
    let d = decode(&bytes).unwrap();
    assert_eq!(d.skipped, 0);
    let mut block = stored(vec![H0], (1..=16).collect());
    block.extra_keys = vec![None];
    assert_eq!(
        d.batch,
        KvBatch {
            ts: 1_795_481_992.5,
            events: vec![
                KvEvent::BlockStored(block),
                KvEvent::BlockRemoved(BlockRemoved {
                    block_hashes: vec![H0],
                    medium: Medium::Gpu,
                    group_idx: 0,
                }),
                KvEvent::AllBlocksCleared,
            ],
            dp_rank: 0,
        }
    );
    assert_eq!(decode_batch(&bytes).unwrap(), d.batch);
}

/// vLLM ~0.9: a two-element batch, array events with only their first fields.
#[test]
fn the_oldest_array_layout() {
    let mut w = W::default();
    w.arr(2).f(1.7e9).arr(3);
    w.arr(5)
        .s("BlockStored")
        .arr(2)
        .u(1)
        .u(2)
        .u(1)
        .tokens(0..32)
        .u(16);
    w.arr(2).s("BlockRemoved").arr(1).u(2);
    w.arr(1).s("AllBlocksCleared");
    let d = decode(&w.bytes()).unwrap();
    let mut block = stored(vec![1, 2], (0..32).collect());
    block.parent_block_hash = Some(1);
    assert_eq!(d.batch.dp_rank, 0);
    assert_eq!(
        d.batch.events,
        [
            KvEvent::BlockStored(block),
            KvEvent::BlockRemoved(BlockRemoved {
                block_hashes: vec![2],
                medium: Medium::Gpu,
                group_idx: 0
            }),
            KvEvent::AllBlocksCleared,
        ]
    );
}

/// Every array field through `kv_cache_spec_kind`, then fields this build does not
/// know (`kv_cache_spec_sliding_window`, later additions).
#[test]
fn the_newest_array_layout_with_extra_trailing_fields() {
    let mut w = W::default();
    w.arr(3).f(2.0).arr(2);
    w.arr(14)
        .s("BlockStored")
        .arr(1)
        .u(9)
        .nil()
        .tokens(0..16)
        .u(16)
        .u(3) // lora_id
        .s("CPU")
        .s("sql-lora")
        .arr(1)
        .arr(3)
        .s("sql-lora")
        .arr(2)
        .s("mm-hash")
        .u(32)
        .bin(&[1, 2])
        .u(1)
        .s("sliding_window")
        .u(4096)
        .map(1)
        .s("k")
        .f(0.5)
        .arr(0);
    w.arr(5)
        .s("BlockRemoved")
        .arr(1)
        .u(9)
        .s("STORAGE")
        .u(1)
        .s("LOCAL");
    w.u(7);
    let d = decode(&w.bytes()).unwrap();
    assert_eq!(d.batch.dp_rank, 7);
    let KvEvent::BlockStored(s) = &d.batch.events[0] else {
        panic!("{:?}", d.batch.events[0]);
    };
    assert_eq!(s.medium, Medium::Cpu);
    assert_eq!(s.lora_name.as_deref(), Some("sql-lora"));
    assert_eq!(s.group_idx, 1);
    assert!(!s.full_attention);
    assert_eq!(
        s.extra_keys,
        [Some(vec![
            ExtraKey::Text("sql-lora".into()),
            ExtraKey::List(vec![ExtraKey::Text("mm-hash".into()), ExtraKey::Int(32)]),
            ExtraKey::Bytes(vec![1, 2]),
        ])]
    );
    assert_eq!(
        d.batch.events[1],
        KvEvent::BlockRemoved(BlockRemoved {
            block_hashes: vec![9],
            medium: Medium::Other,
            group_idx: 1
        })
    );
}

/// Map events with their keys in any order, unknown keys of every type, a
/// `kv_cache_spec_kind`, and optional keys left out.
#[test]
fn map_keys_in_any_order_unknown_ones_ignored() {
    let mut w = W::default();
    w.arr(3).f(3.0).arr(2);
    w.map(9)
        .s("locality")
        .s("REMOTE")
        .s("block_hashes")
        .arr(1)
        .u(5)
        .s("session_id")
        .map(1)
        .s("a")
        .arr(2)
        .nil()
        .f(1.0)
        .i(-3) // a key that is no string, its value an ext
        .raw(&[0xd4, 0x01, 0x02])
        .s("token_ids")
        .tokens(0..16)
        .s("kv_cache_spec_kind")
        .s("full_attention")
        .s("lookahead_token_ids")
        .tokens(0..3)
        .s("block_size")
        .u(16)
        .s("type")
        .s("BlockStored");
    // A BlockRemoved whose optional keys are all left out.
    w.map(2)
        .s("block_hashes")
        .arr(0)
        .s("type")
        .s("BlockRemoved");
    w.u(0);
    let d = decode(&w.bytes()).unwrap();
    let KvEvent::BlockStored(s) = &d.batch.events[0] else {
        panic!()
    };
    assert!(s.full_attention);
    assert_eq!(s.block_hashes, [5]);
    assert_eq!(s.medium, Medium::Gpu);
    assert_eq!(
        d.batch.events[1],
        KvEvent::BlockRemoved(BlockRemoved::default())
    );
}

/// `VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0`: raw 32-byte digests, read as their last
/// eight bytes; integers above `i64::MAX` and negative ones.
#[test]
fn hashes_as_digests_and_every_integer_width() {
    let digest: Vec<u8> = (0..32).collect();
    let low = u64::from_be_bytes(digest[24..].try_into().unwrap());
    let text = "abcdefghijklmnopqrstuvwxyz012345";
    let text_low = u64::from_be_bytes(text.as_bytes()[24..].try_into().unwrap());
    let mut w = W::default();
    w.arr(3).f(0.0).arr(1);
    w.map(5)
        .s("type")
        .s("BlockStored")
        .s("block_hashes")
        .arr(6)
        .bin(&digest)
        .s(text)
        .u(u64::MAX - 1)
        .i(-1)
        .i(-2)
        .bin(&[1, 2])
        .s("parent_block_hash")
        .bin(&digest)
        .s("token_ids")
        .arr(0)
        .s("block_size")
        .u(16);
    w.u(0);
    let d = decode(&w.bytes()).unwrap();
    let KvEvent::BlockStored(s) = &d.batch.events[0] else {
        panic!()
    };
    assert_eq!(
        s.block_hashes,
        [low, text_low, u64::MAX - 1, u64::MAX, u64::MAX - 1, 0x0102]
    );
    assert_eq!(s.parent_block_hash, Some(low));
}

#[test]
fn unknown_event_types_are_skipped_and_counted() {
    let mut w = W::default();
    w.arr(3).f(0.0).arr(4);
    w.map(2).s("type").s("BlockMoved").s("medium").u(3);
    w.arr(3).s("FutureEvent").map(0).f(1.5);
    // With the type first, fields its type does not have are not read.
    w.map(2).s("type").s("AllBlocksCleared").s("medium").i(-1);
    w.map(1).s("type").s("AllBlocksCleared");
    w.u(1);
    let d = decode(&w.bytes()).unwrap();
    assert_eq!(d.skipped, 2);
    assert_eq!(
        d.batch.events,
        [KvEvent::AllBlocksCleared, KvEvent::AllBlocksCleared]
    );
}

fn kind_of(bytes: &[u8]) -> DecodeErrorKind {
    decode(bytes).unwrap_err().kind()
}

#[test]
fn malformed_payloads_are_errors() {
    let batch = |event: &mut dyn FnMut(&mut W)| {
        let mut w = W::default();
        w.arr(3).f(0.0).arr(1);
        event(&mut w);
        w.u(0);
        w.bytes()
    };
    assert_eq!(kind_of(&[]), DecodeErrorKind::Truncated);
    assert_eq!(
        kind_of(&[0xc0]),
        DecodeErrorKind::Expected("a batch [ts, events, dp_rank]")
    );
    assert_eq!(
        kind_of(&[0x91, 0x00]),
        DecodeErrorKind::Expected("a batch of 2 or 3 elements")
    );
    let mut ok = batch(&mut |w| {
        w.arr(1).s("AllBlocksCleared");
    });
    assert!(decode(&ok).is_ok());
    ok.push(0);
    assert_eq!(kind_of(&ok), DecodeErrorKind::TrailingBytes);
    for cut in 0..ok.len() - 1 {
        assert_eq!(
            kind_of(&ok[..cut]),
            DecodeErrorKind::Truncated,
            "cut at {cut}"
        );
    }
    let no_type = batch(&mut |w| {
        w.map(1).s("block_hashes").arr(0);
    });
    assert_eq!(kind_of(&no_type), DecodeErrorKind::Missing("type"));
    let no_tokens = batch(&mut |w| {
        w.arr(2).s("BlockStored").arr(0);
    });
    assert_eq!(kind_of(&no_tokens), DecodeErrorKind::Missing("token_ids"));
    let no_hashes = batch(&mut |w| {
        w.arr(1).s("BlockRemoved");
    });
    assert_eq!(
        kind_of(&no_hashes),
        DecodeErrorKind::Missing("block_hashes")
    );
    for bad in [-1i64, 1 << 32] {
        let bad_token = batch(&mut |w| {
            w.arr(5).s("BlockStored").arr(0).nil().arr(1).i(bad).u(16);
        });
        assert_eq!(kind_of(&bad_token), DecodeErrorKind::OutOfRange("token id"));
    }
    let float_hash = batch(&mut |w| {
        w.arr(2).s("BlockRemoved").arr(1).f(1.0);
    });
    assert_eq!(
        kind_of(&float_hash),
        DecodeErrorKind::Expected("a block hash (int or bytes)")
    );
    let not_an_event = batch(&mut |w| {
        w.u(1);
    });
    assert_eq!(
        kind_of(&not_an_event),
        DecodeErrorKind::Expected("an event (a map or an array)")
    );
    let reserved = batch(&mut |w| {
        w.arr(2).s("Other").raw(&[0xc1]);
    });
    assert_eq!(
        kind_of(&reserved),
        DecodeErrorKind::Expected("a msgpack value")
    );
    let deep = batch(&mut |w| {
        w.arr(9)
            .s("BlockStored")
            .arr(0)
            .nil()
            .arr(0)
            .u(16)
            .nil()
            .nil()
            .nil()
            .arr(1);
        for _ in 0..100 {
            w.arr(1);
        }
        w.nil();
    });
    assert_eq!(kind_of(&deep), DecodeErrorKind::TooDeep);
    let negative_rank = {
        let mut w = W::default();
        w.arr(3).f(0.0).arr(0).i(-1);
        w.bytes()
    };
    assert_eq!(
        kind_of(&negative_rank),
        DecodeErrorKind::OutOfRange("dp_rank")
    );
    let e = decode(&no_type).unwrap_err();
    assert!(e.to_string().contains("has no type"), "{e}");
}

/// Length prefixes are not trusted: four billion claimed elements in a few bytes fail
/// at once, without allocating for them.
#[test]
fn lying_lengths_fail_fast() {
    let mut w = W::default();
    w.arr(3)
        .f(0.0)
        .raw(&[0xdd, 0xff, 0xff, 0xff, 0xff])
        .map(1)
        .s("type");
    assert_eq!(kind_of(&w.bytes()), DecodeErrorKind::Truncated);
    let mut w = W::default();
    w.arr(3).f(0.0).arr(1).arr(5).s("BlockStored");
    w.raw(&[0xdd, 0xff, 0xff, 0xff, 0xff, 1]);
    assert_eq!(kind_of(&w.bytes()), DecodeErrorKind::Truncated);
    // A skipped value claiming a huge map.
    let mut w = W::default();
    w.arr(3).f(0.0).arr(1).arr(2).s("Other");
    w.raw(&[0xdf, 0xff, 0xff, 0xff, 0xff, 1, 2]);
    assert_eq!(kind_of(&w.bytes()), DecodeErrorKind::Truncated);
}
