"""The project's trainer vs a bare PEFT + torch loop: same model, adapter, batches, steps and
completion-only loss, each side in its own fresh process (so peak RSS is that side's alone).

    python benchmarks/trainer_vs_peft.py                       # 8 x 128 tokens, 8 steps, fp32
    python benchmarks/trainer_vs_peft.py --precision bf16-mixed
    python benchmarks/trainer_vs_peft.py --gold-update         # like the default run's update:
                                                               # 160 pairs, 24 steps, 384 tokens
    python benchmarks/trainer_vs_peft.py --pairs gen_001/sft_pairs.json --steps 24 --seq 384

Prints, for each side: tokens/s (non-padding tokens through forward+backward per second of
the training loop, the first, warm-up step left out), seconds per step, peak RSS of the process, wall time of the whole call
(loading and saving included), and the trainer/bare tokens/s ratio (target >= 0.9). The bare
loop is what a plain PEFT script does: ``model(input_ids, labels=...)`` with prompt labels set
to -100, which makes 49k-vocab logits for every position.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sia.train.samples import Sample  # noqa: E402

WORDS = ("court", "charge", "theft", "fraud", "defendant", "sentence", "evidence", "witness", "appeal",
         "property", "contract", "damage", "injury", "license", "tax", "bribe", "smuggling", "drugs")
HANZI = "被告人某某于年月日在市区盗窃诈骗经审理查明公诉机关指控犯罪事实清楚证据确实充分足以认定"


def make_samples(args) -> list[Sample]:
    """Deterministic samples. Fixed mode: prompts longer than ``seq`` (left-truncated to
    exactly ``seq`` tokens with the completion); gold mode: legal-charge-like Chinese facts of
    varied length and short answers, like the default run's SFT pairs."""
    if args.pairs:
        pairs = json.loads(Path(args.pairs).read_text(encoding="utf-8"))
        return [Sample(prompt=p["messages"], completion=p["completion"], group=str(i)) for i, p in enumerate(pairs)]
    rng = random.Random(0)
    samples = []
    for i in range(args.examples):
        if args.gold_update:
            fact = "".join(rng.choice(HANZI) for _ in range(rng.randint(80, 260)))
            prompt = [{"role": "user", "content": "请你模拟法官依据下面事实给出罪名。\n事实:" + fact}]
            completion = "[罪名]" + "".join(rng.choice(HANZI) for _ in range(rng.randint(2, 6))) + "<eoa>"
        else:
            prompt = [{"role": "user", "content": " ".join(rng.choice(WORDS) for _ in range(args.seq * 2))}]
            completion = " ".join(rng.choice(WORDS) for _ in range(args.completion - 1))
        samples.append(Sample(prompt=prompt, completion=completion, group=str(i)))
    return samples


def run_trainer(args, model_cfg, lora_cfg, samples) -> dict:
    from sia.train import train_adapter

    with tempfile.TemporaryDirectory() as tmp:
        r = train_adapter(model_cfg, lora_cfg, args.cache_dir, samples, algorithm="sft", steps=args.steps,
                          out_dir=Path(tmp) / "adapter", seed=0)
    return {"tokens_per_s": r.tokens_per_s, "step_s": r.step_s, "losses": r.losses, "train_peak_rss_mb": r.peak_rss_mb}


def run_bare(args, model_cfg, lora_cfg, samples) -> dict:
    """Plain PEFT + torch: no Lightning, full-vocabulary logits through the model's own loss."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sia.engine.common import load_tokenizer
    from sia.engine.model_cache import resolve_model_dir
    from sia.train.batching import BucketBatchSampler, collate, encode_sample
    from sia.train.peak_memory import PeakRSS
    from sia.train.trainer import steady_rate

    with PeakRSS() as rss:
        model_dir = resolve_model_dir(model_cfg, args.cache_dir)
        tokenizer = load_tokenizer(model_dir)
        examples = [e for e in (encode_sample(tokenizer, s, int(lora_cfg.max_seq_len)) for s in samples) if e]
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        base.config.use_cache = False
        model = get_peft_model(base, LoraConfig(r=int(lora_cfg.rank), lora_alpha=int(lora_cfg.alpha),
                                                lora_dropout=float(lora_cfg.dropout),
                                                target_modules=list(lora_cfg.target_modules), task_type="CAUSAL_LM"))
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=float(lora_cfg.lr))
        sampler = BucketBatchSampler([len(e["input_ids"]) for e in examples], int(lora_cfg.batch_size), 0)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=str(lora_cfg.precision).startswith("bf16"))
        losses, step_tokens, step_s, steps = [], [], [], 0
        last = time.perf_counter()
        while steps < args.steps:
            for indices in sampler:
                rows = [examples[i] for i in indices]
                batch = collate(rows, tokenizer.pad_token_id)
                labels = torch.full_like(batch["input_ids"], -100)
                for r, e in enumerate(rows):
                    labels[r, e["n_prompt"]:len(e["input_ids"])] = torch.tensor(e["input_ids"][e["n_prompt"]:])
                with autocast:
                    loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(float(loss))
                step_tokens.append(int(batch["attention_mask"].sum()))
                now = time.perf_counter()
                step_s.append(now - last)
                last = now
                steps += 1
                if steps == args.steps:
                    break
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
    tokens_per_s, per_step = steady_rate(step_tokens, step_s)  # the same measure as the trainer's
    return {"tokens_per_s": tokens_per_s, "step_s": per_step, "first_step_s": step_s[0], "losses": losses,
            "train_peak_rss_mb": rss.peak_mb}


def child(args) -> None:
    model_cfg = OmegaConf.load(REPO / "conf" / "model" / "smollm2_135m.yaml")
    lora_cfg = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "lora" / "default.yaml"),
                               {"batch_size": args.batch, "max_seq_len": args.seq, "precision": args.precision,
                                "activation_checkpointing": args.checkpointing})
    if args.dropout is not None:
        lora_cfg.dropout = args.dropout
    samples = make_samples(args)
    started = time.perf_counter()
    out = (run_trainer if args.side == "trainer" else run_bare)(args, model_cfg, lora_cfg, samples)
    out["wall_s"] = time.perf_counter() - started
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # whole process, KB on Linux
    print("RESULT " + json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default 8; 24 with --gold-update)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence (lora.max_seq_len)")
    parser.add_argument("--completion", type=int, default=32, help="completion tokens per sequence")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--precision", default="32-true", help="lora.precision: 32-true | bf16-mixed")
    parser.add_argument("--gold-update", action="store_true",
                        help="the default run's update: 160 legal-charge-like pairs, 24 steps, 384 tokens")
    parser.add_argument("--pairs", help="replay a run's sft_pairs.json instead of synthetic samples")
    parser.add_argument("--checkpointing", action="store_true", help="lora.activation_checkpointing=true (trainer)")
    parser.add_argument("--dropout", type=float, default=None, help="override lora.dropout (both sides)")
    parser.add_argument("--sides", default="trainer,bare")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default=os.environ.get("SIA_CACHE_DIR", str(Path.home() / ".cache" / "sia")))
    args = parser.parse_args()
    if args.gold_update:
        args.examples, args.seq = 160, 384
    args.steps = args.steps or (24 if args.gold_update else 8)
    if args.side:
        return child(args)

    results = {}
    for side in args.sides.split(","):
        cmd = [sys.executable, __file__, "--side", side, "--steps", str(args.steps), "--batch", str(args.batch),
               "--seq", str(args.seq), "--completion", str(args.completion), "--examples", str(args.examples),
               "--precision", args.precision, "--cache-dir", args.cache_dir]
        cmd += ["--gold-update"] if args.gold_update else []
        cmd += ["--checkpointing"] if args.checkpointing else []
        cmd += ["--dropout", str(args.dropout)] if args.dropout is not None else []
        cmd += ["--pairs", args.pairs] if args.pairs else []
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.exit(f"{side} side failed:\n{proc.stderr[-3000:]}")
        results[side] = json.loads(lines[-1][len("RESULT "):])

    mode = "gold update" if args.gold_update else f"{args.batch} x {args.seq} tokens"
    print(f"{mode}, {args.steps} steps, precision {args.precision}"
          + (", activation checkpointing (trainer)" if args.checkpointing else "")
          + (f", dropout {args.dropout}" if args.dropout is not None else ""))
    print(f"{'side':8} {'tokens/s':>9} {'s/step':>7} {'wall s':>7} {'peak RSS MB':>12} {'train RSS MB':>12}  first/last loss")
    for side, r in results.items():
        print(f"{side:8} {r['tokens_per_s']:9.1f} {r['step_s']:7.2f} {r['wall_s']:7.1f} {r['peak_rss_mb']:12.0f} "
              f"{r['train_peak_rss_mb']:12.0f}  {r['losses'][0]:.4f} / {r['losses'][-1]:.4f}")
    if {"trainer", "bare"} <= results.keys():
        ratio = results["trainer"]["tokens_per_s"] / results["bare"]["tokens_per_s"]
        print(f"trainer / bare tokens/s: {ratio:.2f} (target >= 0.90)")


if __name__ == "__main__":
    main()
