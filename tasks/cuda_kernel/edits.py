"""The library of harness rewrites the offline rules feedback may pick for this task."""
from __future__ import annotations

from sia.harness.options import with_options
from sia.tasks import HarnessEdit


def _set(**changes):
    return lambda source: with_options(source, **changes)


def harness_edits() -> list[HarnessEdit]:
    return [
        HarnessEdit(
            name="worked_skeleton",
            addresses="format",
            description="Show a complete, correct PyTorch submission (exact signature, data "
                        "layout, one code block) in the prompt, so answers have the right form.",
            apply=_set(include_skeleton=True),
        ),
        HarnessEdit(
            name="retry_invalid_answer",
            addresses="format",
            description="When the answer holds no valid custom_kernel, say why and ask once more.",
            apply=_set(retries=1),
        ),
        HarnessEdit(
            name="fallback_template",
            addresses="errors",
            description="When every answer is invalid, submit a safe, correct PyTorch template "
                        "instead of nothing (scores about reference speed rather than 0).",
            apply=_set(fallback_template=True),
        ),
        HarnessEdit(
            name="batched_matmul_strategy",
            addresses="accuracy",
            description="Spell out the fused formulation: one stacked projection GEMM, in-place "
                        "gating, one batched matmul for the triangle product.",
            apply=_set(strategy="batched_matmul"),
        ),
    ]
