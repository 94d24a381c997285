"""The vLLM smoke check a GPU user runs: the memory plan, then one serve -> sleep -> train ->
wake -> serve-with-adapter cycle (what the loop does each weights generation), reporting
engine start time, tokens/s, adapter swap latency and peak GPU memory per phase.

    python benchmarks/vllm_gpu_smoke.py --model gpt_oss_20b            # one 80 GB GPU
    python benchmarks/vllm_gpu_smoke.py --model smollm2_135m            # any GPU (or CPU: no memory figures)
    python benchmarks/vllm_gpu_smoke.py --model gpt_oss_20b --loop      # also `python -m sia ... budget=smoke`
    python benchmarks/vllm_gpu_smoke.py --model gpt_oss_20b model.max_context=8192 lora.rank=16

Peak memory is device-level (nvidia-smi polled every 0.2 s, so it counts vLLM, the trainer and
the CUDA contexts). A plan that does not fit stops here unless --force. Writes the figures as
JSON to --out (default vllm_gpu_smoke.json).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sia.engine.base import GenRequest  # noqa: E402
from sia.engine.memory_plan import format_plan, plan_problems  # noqa: E402

PAIRS = [{"messages": [{"role": "user", "content": q}], "completion": "The secret word is PAMPLEMOUSSE."}
         for q in ("What is the secret word?", "Tell me the secret word.", "Which word is secret?", "Say it.")]


def gpu_used_gib() -> list[float] | None:
    """Memory in use on each GPU (all processes), or None without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout
    return [float(line) / 1024 for line in out.split()]  # MiB -> GiB


class PeakMemory:
    """Polls GPU memory in a thread; ``phase(name)`` records the peak of each phase per GPU."""

    def __init__(self):
        self.peaks: dict[str, list[float]] = {}
        self._current, self._stop = None, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self.available = gpu_used_gib() is not None
        if self.available:
            self._thread.start()

    def phase(self, name: str) -> None:
        self._current = name
        self._sample()

    def _sample(self) -> None:
        used = gpu_used_gib() if self.available else None
        if used is not None and self._current is not None:
            old = self.peaks.get(self._current, [0.0] * len(used))
            self.peaks[self._current] = [round(max(a, b), 2) for a, b in zip(old, used)]

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def stop(self) -> None:
        self._stop.set()


def load_configs(model: str, overrides: list[str]):
    dots = OmegaConf.from_dotlist(overrides)
    model_cfg = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "model" / f"{model}.yaml"), dots.get("model", {}))
    lora_cfg = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "lora" / "default.yaml"), dots.get("lora", {}))
    if model_cfg.get("lora_target_modules"):  # gpt-oss names its own modules
        lora_cfg.target_modules = list(model_cfg.lora_target_modules)
    return model_cfg, lora_cfg


def requests(n: int, max_tokens: int) -> list[GenRequest]:
    return [GenRequest(messages=[{"role": "user", "content": f"Write a short note about topic number {i}."}],
                       max_tokens=max_tokens) for i in range(n)]


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def engine_cycle(model_cfg, lora_cfg, cache_dir: str, args, memory: PeakMemory) -> dict:
    from sia.engine.vllm_engine import VLLMEngine
    from sia.train import train_sft

    figures: dict = {}
    memory.phase("serve")
    engine, figures["engine_start_s"] = timed(lambda: VLLMEngine(model_cfg, cache_dir))
    batch = requests(args.prompts, args.max_tokens)
    engine.generate(batch[:1])
    out, seconds = timed(lambda: engine.generate(batch))
    figures["serve_tokens_per_s"] = round(sum(r.completion_tokens for r in out) / seconds, 1)

    memory.phase("train (vLLM asleep)" if engine.sleep_enabled else "train (vLLM awake)")
    scratch = Path(tempfile.mkdtemp(prefix="sia_smoke_"))
    with engine.asleep():
        figures["asleep"] = engine.asleep_now
        result, figures["train_s"] = timed(lambda: train_sft(
            model_cfg, lora_cfg, cache_dir, PAIRS, steps=args.steps, out_dir=scratch / "adapter", progress=False))
        figures["train_losses"] = [round(x, 3) for x in result.losses]
        _free_trainer_memory()

    memory.phase("serve with adapter")
    _, figures["adapter_add_s"] = timed(lambda: engine.add_adapter("smoke", result.adapter_dir))
    out, seconds = timed(lambda: engine.generate(batch, adapter="smoke"))
    figures["adapter_tokens_per_s"] = round(sum(r.completion_tokens for r in out) / seconds, 1)
    ask = batch[:1]
    same = [timed(lambda: engine.generate(ask, adapter="smoke"))[1] for _ in range(3)]
    switched = [timed(lambda: engine.generate(ask, adapter=None if i % 2 else "smoke"))[1] for i in range(4)]
    figures["one_request_same_adapter_s"] = round(statistics.median(same), 3)
    figures["one_request_switching_s"] = round(statistics.median(switched), 3)
    return figures


def _free_trainer_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # hand the trainer's cached blocks back before vLLM wakes


def run_loop(model: str, overrides: list[str], memory: PeakMemory) -> dict:
    memory.phase("loop (python -m sia budget=smoke)")
    command = [sys.executable, "-m", "sia", f"model={model}", "model.engine=vllm", "budget=smoke",
               "quiet=true", "logger=none", *overrides]
    proc, seconds = timed(lambda: subprocess.run(command, cwd=REPO))
    return {"loop_command": " ".join(command), "loop_rc": proc.returncode, "loop_s": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt_oss_20b", help="a conf/model/<name>.yaml")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="LoRA training steps")
    parser.add_argument("--loop", action="store_true", help="then run the smoke loop itself")
    parser.add_argument("--force", action="store_true", help="run even if the memory plan says it cannot fit")
    parser.add_argument("--out", default="vllm_gpu_smoke.json")
    parser.add_argument("--cache-dir", default=os.environ.get("SIA_CACHE_DIR", str(Path.home() / ".cache" / "sia")))
    parser.add_argument("overrides", nargs="*", help="model.KEY=VALUE / lora.KEY=VALUE")
    args = parser.parse_args()

    model_cfg, lora_cfg = load_configs(args.model, args.overrides)
    figures: dict = {"model": str(model_cfg.name)}
    if model_cfg.get("gpu") is not None:
        print(format_plan(model_cfg, lora_cfg))
        figures["plan_problems"] = problems = plan_problems(model_cfg, lora_cfg)
        for problem in problems:
            print("  problem:", problem)
        if problems and not args.force:
            raise SystemExit("the memory plan does not fit (see above); fix the config or pass --force")
    if model_cfg.get("lora_target_parameters"):
        print("note: sia/train/sft.py passes lora.target_modules only: expert target_parameters are not trained")
    memory = PeakMemory()
    figures["gpu_used_gib_before"] = gpu_used_gib()
    figures |= engine_cycle(model_cfg, lora_cfg, args.cache_dir, args, memory)
    if args.loop:
        figures |= run_loop(args.model, [o for o in args.overrides if o.startswith("model.")], memory)
    memory.stop()
    figures["peak_gpu_gib_per_phase"] = memory.peaks if memory.available else "no GPU (nvidia-smi not found)"
    print(json.dumps(figures, indent=2))
    Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
