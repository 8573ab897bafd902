# Sourced by benches/router/{run,ab,instructions}: the loads they share.
#
# write_loads DIR writes into DIR:
# - stepped.toml: a simulator profile whose engines take 0.5 ms a step and so write each
#   SSE event separately, one per step, as vLLM does (the `instant` profile would hand
#   the proxy all 16 events in one write and flatter it);
# - plain.json, stream.json: a ~1 KB chat request for model `m`, 16 tokens, without and
#   with streaming.
write_loads() {
  cat > "$1/stepped.toml" <<'TOML'
[[profile]]
name = "stepped"
base_ms = 0.5
decode_seq_ms = 0.0
decode_ctx_ms = 0.0
prefill_token_ms = 0.0
prefill_attention_ms = 0.0
num_gpu_blocks = 65536
block_size = 16
max_num_seqs = 256
max_num_batched_tokens = 65536
max_model_len = 32768
TOML
  local content
  content=$(python3 -c 'print(("The quick brown fox jumps over the lazy dog. " * 22)[:960])')
  printf '{"model":"m","messages":[{"role":"user","content":"%s"}],"max_tokens":16,"ignore_eos":true}' "$content" > "$1/plain.json"
  printf '{"model":"m","messages":[{"role":"user","content":"%s"}],"max_tokens":16,"ignore_eos":true,"stream":true}' "$content" > "$1/stream.json"
}

# CPU time of a process, all its threads, in ns (the scheduler's own account: /proc's
# utime+stime come in 10 ms ticks, ±3 % of a 5 s round's CPU at either end).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f", s}'; }
