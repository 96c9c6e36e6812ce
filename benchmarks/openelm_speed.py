"""OpenELM speed: corefm's model against transformers' LlamaForCausalLM of the same shape, side by side.

    python benchmarks/openelm_speed.py [--layers 8] [--width 512] [--threads 1] [--seconds 3] [--quick]

Both models: the same depth, width, head size, query/KV heads (GQA), SwiGLU width, 32k tied
vocabulary, RMSNorm and RoPE, so their matmul FLOPs are equal (corefm's OpenELM adds its
QK-norm, which costs no matmul FLOPs). corefm's model uses uniform widths here (every layer
like Llama's); the layer-wise-scaled OpenELM of the same depth and width is timed beside them.

* training: tokens/s of full steps (forward, loss, backward, AdamW) on batch x seq_len random
  tokens. corefm runs its training path (the ``causal_lm`` task's one-pass loss); Llama its own
  (``labels=`` -> transformers' loss). Both step torch's fused AdamW (transformers' Trainer
  default), so the comparison is of the models and losses. MFU = model FLOPs/s over the bf16
  matmul peak measured in this run (``corefm.train.meters.measure_matmul_peak``). Model FLOPs
  per token: 6 x matmul parameters (LM head included) + 6 x causal attention (2 x 2 x seq/2 x
  query width per layer, forward).
* decoding: new tokens/s of greedy decoding with a KV cache after a 32-token prompt, 64 new
  tokens, batch 1 and 8 (corefm ``OpenELM.generate``, transformers ``generate``).

fp32 and bf16 (weights and activations; AdamW on the same parameters). Each measurement lasts
>= --seconds; the models take turns in rounds and medians are reported. Rates are given per wall-clock second and per
CPU-second of this process (``time.process_time``): on a machine shared with other jobs the wall
clock counts their time too, while CPU time counts only ours, so ratios and MFU are taken from
CPU time (the matmul peak is measured the same way, per CPU-second). Prints markdown and writes
benchmarks/results/openelm_speed.json. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script

from corefm.tasks.causal_lm import CausalLMConfig, CausalLMTask  # noqa: E402
from corefm.train.meters import measure_matmul_peak  # noqa: E402
from projects.openelm.config import OpenELMConfig, layer_specs  # noqa: E402
from projects.openelm.model import OpenELM  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "openelm_speed.json")
VOCAB, HEAD_DIM, GROUPS = 32000, 64, 4


def openelm_config(layers: int, width: int, scaled: bool) -> OpenELMConfig:
    """Uniform: every layer width/64 query heads, a quarter as many KV heads, FFN 3 x width."""
    mults = dict(qkv_multipliers=(0.5, 1.0), ffn_multipliers=(0.5, 4.0)) if scaled else \
        dict(qkv_multipliers=1.0, ffn_multipliers=3.0)
    return OpenELMConfig(num_transformer_layers=layers, model_dim=width, head_dim=HEAD_DIM, num_gqa_groups=GROUPS,
                         vocab_size=VOCAB, max_context_length=2048, **mults)


def llama_like(cfg: OpenELMConfig):
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = layer_specs(cfg)[0]
    hf = LlamaConfig(vocab_size=VOCAB, hidden_size=cfg.model_dim, intermediate_size=spec.ffn_dim,
                     num_hidden_layers=cfg.num_transformer_layers, num_attention_heads=spec.num_heads,
                     num_key_value_heads=spec.num_kv_heads, head_dim=HEAD_DIM, rms_norm_eps=1e-6,
                     max_position_embeddings=2048, rope_theta=10000.0, tie_word_embeddings=True,
                     attention_bias=False, mlp_bias=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    hf._attn_implementation = "sdpa"
    return LlamaForCausalLM(hf)


def model_flops_per_token(cfg: OpenELMConfig, seq: int) -> float:
    """Training FLOPs per token: 6 x matmul params + 6 x causal attention (see module docstring)."""
    d = cfg.model_dim
    total = 2 * d * VOCAB  # LM head
    for s in layer_specs(cfg):
        total += 2 * (d * (s.num_heads + 2 * s.num_kv_heads) * s.head_dim + s.num_heads * s.head_dim * d
                      + 3 * d * s.ffn_dim)
        total += 2 * 2 * (seq / 2) * s.num_heads * s.head_dim
    return 3 * total


def rates(fn: Callable[[], int], seconds: float) -> tuple[float, float]:
    """(units per wall second, units per CPU-second) of fn (which returns the units it did), >= seconds."""
    fn()  # warm-up (allocator, kernels, caches)
    done, wall, cpu = 0, time.perf_counter(), time.process_time()
    while time.process_time() - cpu < seconds:
        done += fn()
    return done / (time.perf_counter() - wall), done / (time.process_time() - cpu)


def cpu_matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    """Matmul FLOPs per CPU-second of this process (the denominator of the CPU-time MFU)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return rates(lambda: (a @ b, 2 * n**3)[1], seconds)[1]


def corefm_train_step(model: OpenELM, batch: int, seq: int) -> Callable[[], int]:
    task = CausalLMTask(CausalLMConfig(), model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    tokens = torch.randint(0, VOCAB, (batch, seq + 1))

    def step() -> int:
        task({"tokens": tokens})["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return batch * seq
    return step


def llama_train_step(model, batch: int, seq: int) -> Callable[[], int]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    tokens = torch.randint(0, VOCAB, (batch, seq))

    def step() -> int:
        model(input_ids=tokens, labels=tokens).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return batch * seq
    return step


def decode_fn(model, batch: int, prompt: int, new: int, is_llama: bool, device: str | torch.device = "cpu"
              ) -> Callable[[], int]:
    ids = torch.randint(3, VOCAB, (batch, prompt), device=device)

    @torch.no_grad()
    def run() -> int:
        if is_llama:
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                 min_new_tokens=new, do_sample=False, use_cache=True, pad_token_id=0)
        else:
            out = model.generate(ids, new)
        assert out.shape[1] == prompt + new
        return batch * new
    return run


def measure(args, dtype: torch.dtype, peaks: dict[str, float]) -> list[dict]:
    uniform = openelm_config(args.layers, args.width, scaled=False)
    scaled = openelm_config(args.layers, args.width, scaled=True)
    torch.manual_seed(0)
    models = {"corefm OpenELM (uniform)": OpenELM(uniform).to(dtype),
              "transformers Llama": llama_like(uniform).to(dtype),
              "corefm OpenELM (layer-wise scaled)": OpenELM(scaled).to(dtype)}
    cfgs = {"corefm OpenELM (uniform)": uniform, "transformers Llama": uniform,
            "corefm OpenELM (layer-wise scaled)": scaled}
    rows = {name: {"model": name, "dtype": str(dtype).removeprefix("torch."),
                   "params": sum(p.numel() for p in m.parameters())} for name, m in models.items()}
    fns: dict[tuple[str, str], Callable[[], int]] = {}
    for name, m in models.items():
        is_llama = "Llama" in name
        fns[(name, "train")] = (llama_train_step if is_llama else corefm_train_step)(m, args.batch, args.seq)
    for name, m in models.items():
        for b in (1, 8):
            fns[(name, f"decode_b{b}")] = decode_fn(m, b, 32, args.new_tokens, "Llama" in name)
    # Rounds: in each, the three models run the same workload back to back, so load from other
    # processes hits them alike; rates are medians over rounds, ratios medians of per-round ratios.
    per_round: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for what in ("train", "decode_b1", "decode_b8"):
        for _ in range(args.repeats):
            for name, m in models.items():
                m.train(what == "train")
                wall, cpu = rates(fns[(name, what)], args.seconds)
                per_round.setdefault((name, what), []).append((wall, cpu))
                print(f"  {name} {str(dtype).removeprefix('torch.')} {what}: {wall:,.0f} tokens/s, "
                      f"{cpu:,.0f} per CPU-s", file=sys.stderr, flush=True)
    for (name, what), values in per_round.items():
        rows[name][f"{what}_tokens_per_s"] = statistics.median(w for w, _ in values)
        rows[name][f"{what}_tokens_per_cpu_s"] = statistics.median(c for _, c in values)
        base = per_round[("transformers Llama", what)]
        rows[name][f"{what}_vs_llama"] = statistics.median(c / b[1] for (_, c), b in zip(values, base))
        rows[name][f"{what}_vs_llama_wall"] = statistics.median(w / b[0] for (w, _), b in zip(values, base))
        rows[name][f"{what}_rounds_cpu"] = [c for _, c in values]
    for name, row in rows.items():
        per_token = model_flops_per_token(cfgs[name], args.seq)
        row["train_flops_per_token"] = per_token
        row["mfu_wall_vs_bf16_peak"] = per_token * row["train_tokens_per_s"] / peaks["bf16"]
        row["mfu_cpu_vs_bf16_peak"] = per_token * row["train_tokens_per_cpu_s"] / peaks["bf16_per_cpu_s"]
    return list(rows.values())


def table(rows: list[dict], peaks: dict[str, float]) -> str:
    lines = [f"bf16 matmul peak {peaks['bf16'] / 1e9:.0f} GFLOP/s wall, {peaks['bf16_per_cpu_s'] / 1e9:.0f} per "
             f"CPU-s; fp32 {peaks['fp32'] / 1e9:.0f} / {peaks['fp32_per_cpu_s'] / 1e9:.0f} (measured in this run). "
             "Rates in tokens per CPU-second (wall-clock tokens/s in brackets); MFU from CPU time.", "",
             "| model | dtype | train tok/s | vs Llama | MFU (bf16 peak) | decode b1 tok/s | vs Llama "
             "| decode b8 tok/s | vs Llama |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = [r["model"], r["dtype"]]
        for what in ("train", "decode_b1", "decode_b8"):
            cells += [f"{r[what + '_tokens_per_cpu_s']:,.0f} ({r[what + '_tokens_per_s']:,.0f})",
                      f"{r[what + '_vs_llama']:.2f}x"]
            if what == "train":
                cells.append(f"{100 * r['mfu_cpu_vs_bf16_peak']:.1f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=64)
    # One thread by default: on a shared machine a second OpenMP thread that gets preempted stalls
    # every parallel op (and its spin-wait inflates CPU time); use --threads 2 on an idle machine.
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=2.0, help="CPU-seconds per measurement")
    p.add_argument("--repeats", type=int, default=5, help="rounds (medians are reported)")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--quick", action="store_true", help="short timings (a smoke run, numbers are rough)")
    args = p.parse_args()
    if args.quick:
        args.seconds, args.repeats = 0.5, 1
    torch.set_num_threads(args.threads)
    peaks = {"bf16": measure_matmul_peak(torch.bfloat16, n=2048, seconds=2.0),
             "fp32": measure_matmul_peak(torch.float32, n=2048, seconds=2.0),
             "bf16_per_cpu_s": cpu_matmul_peak(torch.bfloat16), "fp32_per_cpu_s": cpu_matmul_peak(torch.float32)}
    rows = []
    for name in args.dtypes.split(","):
        rows += measure(args, getattr(torch, name), peaks)
    print(table(rows, peaks))
    config = {k: v for k, v in vars(args).items()}
    out = {"config": config, "peaks_flops": peaks, "rows": rows, "machine": platform.processor() or platform.machine(),
           "torch": torch.__version__, "time": time.strftime("%Y-%m-%d %H:%M")}
    import transformers

    out["transformers"] = transformers.__version__
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(out, f, indent=1)
    print(f"\nwrote {RESULTS}")
    from benchmarks._chart import write_chart  # the picture beside the JSON

    write_chart("openelm_speed", out, RESULTS)


if __name__ == "__main__":
    main()
