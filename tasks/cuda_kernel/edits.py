"""The library of harness rewrites the offline rules feedback may pick for this task."""
from __future__ import annotations

from sia.harness.options import option_edit
from sia.tasks import HarnessEdit


def harness_edits() -> list[HarnessEdit]:
    return [
        HarnessEdit("worked_skeleton", "format",
                    "Show a complete, correct PyTorch submission (exact signature, data layout, one "
                    "code block) in the prompt, so answers have the right form.",
                    option_edit(include_skeleton=True)),
        HarnessEdit("retry_invalid_answer", "format",
                    "When the answer holds no valid custom_kernel, say why and ask once more.",
                    option_edit(retries=1)),
        HarnessEdit("fallback_template", "errors",
                    "When every answer is invalid, submit a safe, correct PyTorch template instead of "
                    "nothing (scores about reference speed rather than 0).",
                    option_edit(fallback_template=True)),
        HarnessEdit("batched_matmul_strategy", "accuracy",
                    "Spell out the fused formulation: one stacked projection GEMM, in-place gating, one "
                    "batched matmul for the triangle product.",
                    option_edit(strategy="batched_matmul")),
    ]
