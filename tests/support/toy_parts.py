"""Test-only parts, added from a test-only config group without touching ``sia/``:
a toy feedback agent and a toy engine (deterministic, instant)."""
from __future__ import annotations

from sia.agents.decision import Decision
from sia.engine.base import Engine, EngineStats, GenResult
from sia.parts import Feedback


class ToyFeedback(Feedback):
    """Applies the task's first applicable library edit once, then stops."""

    wants_train_probe = False

    def __init__(self, name: str, note: str):
        self.name, self.note = name, note

    def decide(self, ctx) -> Decision:
        if ctx.generation == 1:
            for edit in ctx.edits:
                code = edit.apply(ctx.harness_code)
                if code is not None:
                    return Decision(action="harness", rationale=f"{self.note}: {edit.name}", harness_code=code,
                                    edit=edit.name)
        return Decision(action="stop", rationale=f"{self.note}: done")


class ToyEngine(Engine):
    """Names every charge the prompt lists when it lists them, else abstains."""

    max_batch_size = 16

    def __init__(self, model_cfg, cache_dir):
        self.stats = EngineStats()

    def add_adapter(self, name, path):
        pass

    def chat_template(self, messages, completion=None):
        return "\n".join(m["content"] for m in messages) + (completion or "")

    def generate(self, requests, adapter=None):
        out = []
        for r in requests:
            prompt = "\n".join(m["content"] for m in r.messages)
            listed = prompt.split("可选罪名：")[1].split("\n")[0] if "可选罪名：" in prompt else None
            text = f"[罪名]{listed}<eoa>" if listed else "我不知道"
            self.stats.requests += 1
            out.append(GenResult(text=text, prompt_tokens=10, completion_tokens=3, token_logprobs=[-0.1] * 3,
                                 finish_reason="stop"))
        return out
