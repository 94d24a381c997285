"""Seed harness of the cuda_kernel task: ask the task model for a TriMul submission and
return the Python source of its code block.

Standard library only: this file runs in a sandboxed harness worker. The answer is the
module source; the evaluator imports it in its own sandboxed child and judges it.
"""
from __future__ import annotations

import ast
import re

OPTIONS = {
    "max_tokens": 1536,
    "temperature": 0.0,
    "include_skeleton": False,     # show a complete, correct PyTorch submission to start from
    "strategy": "any",             # any | batched_matmul: spell out the fused formulation
    "retries": 0,                  # re-ask when the answer holds no valid custom_kernel
    "fallback_template": False,    # submit a safe PyTorch template when every answer is invalid
}

SYSTEM = (
    "You are an expert GPU kernel engineer. You write fast, numerically correct PyTorch, "
    "Triton and CUDA code. Answer with ONE Python module in a single ```python code block."
)

# A correct (slow) submission: the fallback answer, and, fenced, the skeleton the prompt shows.
TEMPLATE = '''import torch
import torch.nn.functional as F


def custom_kernel(data):
    x, mask, w = data                      # x [B,N,N,C], mask [B,N,N], w: dict of tensors
    c, h = x.shape[-1], w["left_proj"].shape[0]
    x = F.layer_norm(x, (c,), w["norm_in_weight"], w["norm_in_bias"], 1e-5)
    m = mask.unsqueeze(-1)
    left = (x @ w["left_proj"].T) * m * torch.sigmoid(x @ w["left_gate"].T)
    right = (x @ w["right_proj"].T) * m * torch.sigmoid(x @ w["right_gate"].T)
    gate = torch.sigmoid(x @ w["out_gate"].T)
    out = torch.einsum("bikh,bjkh->bijh", left, right)   # the O(N^3) part: optimise here
    out = F.layer_norm(out, (h,), w["norm_out_weight"], w["norm_out_bias"], 1e-5)
    return (out * gate) @ w["out_proj"].T
'''

SKELETON = "```python\n" + TEMPLATE + "```"

BATCHED_HINT = (
    "Use this formulation: compute the four left/right projections with ONE matrix product "
    "of the stacked weights [4H, C] with x reshaped to [B*N*N, C] (transposed, so the result "
    "is channels-first [4H, B*N*N]); apply sigmoid gates and the mask in place; view left and "
    "right as [H*B, N, N] and compute the triangle product with one torch.bmm(left, "
    "right.transpose(1, 2)); transpose the result to [B*N*N, H] once for the output "
    "LayerNorm, multiply by the output gate and project with out_proj."
)

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.S)


def extract_code(text: str) -> str:
    """The code of the answer: the last fenced block that mentions custom_kernel (an
    unterminated final fence counts: the answer may have hit max_tokens), else the last
    block, else the whole text when it parses as Python."""
    blocks = [body for lang, body in _FENCE.findall(text or "") if lang.lower() in ("", "python", "py")]
    with_kernel = [b for b in blocks if "custom_kernel" in b]
    if with_kernel or blocks:
        return (with_kernel or blocks)[-1].strip() + "\n"
    try:
        ast.parse(text or "")
    except SyntaxError:
        return ""
    return (text or "").strip() + "\n" if (text or "").strip() else ""


def code_problem(code: str) -> str:
    """Why ``code`` cannot be a submission, or '' when it looks like one."""
    if not code.strip():
        return "the answer holds no Python code block"
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        return f"the code does not parse: line {e.lineno}: {e.msg}"
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "custom_kernel":
            return ""
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "custom_kernel" for t in node.targets):
            return ""
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                (a.asname or a.name) == "custom_kernel" for a in node.names):
            return ""
    return "the code defines no top-level custom_kernel(data)"


def build_messages(inputs: dict, resources: dict) -> list[dict]:
    device = inputs.get("device") or resources.get("device", "cuda")
    parts = [
        "Implement this operator as fast as possible.",
        resources.get("operator", ""),
        "Submission contract:\n" + resources.get("contract", ""),
        f"The evaluation device is {device}."
        + (" Triton runs through its interpreter there (TRITON_INTERPRET=1)." if device == "cpu" else ""),
    ]
    shapes = inputs.get("benchmark") or resources.get("shapes", {}).get("benchmark")
    if shapes:
        parts.append("Benchmark shapes (n, b, c, h, mask, dist): "
                     + "; ".join(f"({s['n']}, {s['b']}, {s['c']}, {s['h']}, {s['mask']}, {s['dist']})" for s in shapes))
    if OPTIONS["strategy"] == "batched_matmul":
        parts.append(BATCHED_HINT)
    if OPTIONS["include_skeleton"]:
        parts.append("A correct (slow) submission to start from, same data layout:\n" + SKELETON)
    parts.append("Reply with the complete module in one ```python code block defining custom_kernel(data).")
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": "\n\n".join(p for p in parts if p)}]


def solve(inputs: dict, ctx):
    messages = build_messages(inputs, getattr(ctx, "resources", {}) or {})
    attempt = int(inputs.get("attempt", 0))
    code, problem = "", ""
    for round_ in range(1 + int(OPTIONS["retries"])):
        completion = ctx.llm.chat(messages, max_tokens=OPTIONS["max_tokens"],
                                  temperature=OPTIONS["temperature"], seed=attempt * 97 + round_)
        code = extract_code(completion.text)
        problem = code_problem(code)
        if not problem:
            return code
        ctx.log("invalid_submission", reason=problem, round=round_)
        messages = messages + [
            {"role": "assistant", "content": completion.text},
            {"role": "user", "content": f"That answer cannot be used: {problem}. Reply with only the "
                                        "complete module in one ```python code block."},
        ]
    if OPTIONS["fallback_template"]:
        ctx.log("fallback_template", reason=problem)
        return TEMPLATE
    return code or None
