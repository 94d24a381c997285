"""Task cuda_kernel: operator, evaluator (sandboxed child, parent-owned clock), hostile
submissions, seed harness. Runs on CPU; every judged submission is a real child process."""
from __future__ import annotations

import copy
import json
import math
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from sia.harness.options import read_options
from sia.harness.sandbox import probe
from security_layers import check_present, needs
from sia.tasks import TASKS_DIR, load_task

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf" / "task" / "cuda_kernel.yaml"
SUBMISSIONS = Path(__file__).resolve().parent / "cuda_kernel_submissions"

TASK = load_task("cuda_kernel", {**yaml.safe_load(CONF.read_text()), "device": "cpu"})
# The task's modules, as the registry loaded them (package sia_tasks.cuda_kernel).
from sia_tasks.cuda_kernel import fast_baseline, inputs, reference, seed_harness  # noqa: E402
from sia_tasks.cuda_kernel.cases import Case  # noqa: E402
from sia_tasks.cuda_kernel.judge import REFERENCE_SOURCE, Judge  # noqa: E402
from sia_tasks.cuda_kernel.settings import Settings, problems  # noqa: E402

LAYERS = probe()
needs_sandbox = needs(LAYERS)   # skipped where layers are missing, except under CI=true (they fail there)

NORMAL = {"n": 8, "b": 1, "c": 16, "h": 8, "mask": "none", "dist": "normal"}
MASKED = {"n": 9, "b": 2, "c": 16, "h": 8, "mask": "random", "dist": "normal"}
CAUCHY = {"n": 10, "b": 1, "c": 16, "h": 8, "mask": "none", "dist": "cauchy"}
BENCH = {"n": 16, "b": 1, "c": 16, "h": 8, "mask": "random", "dist": "cauchy"}


def small_cfg(correctness=(NORMAL, MASKED, CAUCHY), benchmark=(BENCH,), call_s=20, repeats=2,
              start_s=60) -> dict:
    """The shipped config with tiny CPU shapes and few calls, so one judgement takes seconds."""
    cfg = yaml.safe_load(CONF.read_text())
    cfg["device"] = "cpu"
    cfg["shapes"]["cpu"] = {"correctness": list(correctness), "benchmark": list(benchmark)}
    cfg["timing"]["val"] = {"correctness_seeds": 1, "warmup": 0, "repeats": repeats}
    cfg["timeouts"]["cpu"] = {"start_s": start_s, "call_s": call_s, "total_s": 180}
    return cfg


def judge(source: str, cfg: dict | None = None, **judge_kwargs):
    settings = Settings.from_cfg(cfg or small_cfg())
    return Judge(settings, settings.plans["val"], **judge_kwargs).judge(source)


def submission(name: str) -> str:
    return (SUBMISSIONS / name).read_text()


def completion(name: str) -> str:
    return (SUBMISSIONS / "completions" / f"{name}.md").read_text()


def random_data(case: Case, seed: int = 0):
    x, mask, weights = inputs.generate_bulk(case, seed, "cpu")
    weights.update(inputs.generate_run_time_weights(case, seed + 1))
    return x, mask, weights


def test_the_evaluator_sandbox_is_complete_under_ci():
    check_present(LAYERS)


# ---- operator ------------------------------------------------------------------------------

def naive_trimul(x, mask, w):
    """Float64, loops over k: the operator exactly as the issue states it."""
    x, mask = x.double(), mask.double()
    w = {k: v.double() for k, v in w.items()}

    def layer_norm(t, weight, bias):
        mean = t.mean(-1, keepdim=True)
        var = ((t - mean) ** 2).mean(-1, keepdim=True)
        return (t - mean) / torch.sqrt(var + 1e-5) * weight + bias

    x = layer_norm(x, w["norm_in_weight"], w["norm_in_bias"])
    m = mask[..., None]
    left = (x @ w["left_proj"].T) * m * torch.sigmoid(x @ w["left_gate"].T)
    right = (x @ w["right_proj"].T) * m * torch.sigmoid(x @ w["right_gate"].T)
    out = torch.zeros_like(left)
    for k in range(x.shape[1]):
        out += left[:, :, None, k, :] * right[:, None, :, k, :]
    out = layer_norm(out, w["norm_out_weight"], w["norm_out_bias"]) * torch.sigmoid(x @ w["out_gate"].T)
    return out @ w["out_proj"].T


@pytest.mark.parametrize("case", [Case(**MASKED), Case(**CAUCHY), Case(n=13, b=2, c=24, h=12, mask="random", dist="cauchy")])
def test_reference_matches_a_float64_loop_over_k(case):
    data = random_data(case)
    expected = naive_trimul(*data)
    got = reference.trimul_reference(*data)
    assert got.dtype == torch.float32 and got.shape == (case.b, case.n, case.n, case.c)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


def test_fast_baseline_matches_the_reference_on_every_configured_cpu_shape():
    cfg = yaml.safe_load(CONF.read_text())
    for raw in cfg["shapes"]["cpu"]["correctness"] + cfg["shapes"]["cpu"]["benchmark"][:4]:
        data = random_data(Case(**raw), seed=3)
        expected = reference.custom_kernel(data)
        got = fast_baseline.custom_kernel(tuple(copy.deepcopy(list(data))))
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_inputs_are_reproducible_seed_dependent_and_heavy_tailed():
    case = Case(n=24, b=1, c=32, h=8, mask="random", dist="cauchy")
    x1, m1, w1 = inputs.generate_bulk(case, 11, "cpu")
    x2, m2, w2 = inputs.generate_bulk(case, 11, "cpu")
    x3, _, _ = inputs.generate_bulk(case, 12, "cpu")
    assert torch.equal(x1, x2) and torch.equal(m1, m2) and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert not torch.equal(x1, x3)
    assert x1.abs().max() > 100          # Cauchy(0, 2): heavy tails
    assert 0.3 < m1.mean() < 0.7 and set(m1.unique().tolist()) == {0.0, 1.0}
    assert set(w1) | set(inputs.RUN_TIME_WEIGHTS) == set(inputs.WEIGHT_NAMES)
    assert w1["left_proj"].std().item() == pytest.approx(1 / math.sqrt(8), rel=0.2)
    assert w1["out_proj"].std().item() == pytest.approx(1 / math.sqrt(32), rel=0.2)


# ---- configuration and task surface --------------------------------------------------------

def test_shipped_config_composes_and_has_no_problems(compose_cfg):
    cfg = compose_cfg("task=cuda_kernel", "lora.rank=32")
    assert cfg.task.name == "cuda_kernel"
    assert problems(cfg.task) == []
    task = load_task("cuda_kernel", cfg.task)
    assert task.scoring.primary_metric == "speedup" and task.scoring.direction == "max"
    assert task.scoring.reward_shape == "sparse" and not task.supports_gold_sft()


def test_config_problems_name_the_key_the_value_and_the_fix():
    cfg = small_cfg()
    cfg["device"] = "tpu"
    cfg["tolerance"]["rtol"] = 2
    cfg["examples"]["val"] = 0
    cfg["shapes"]["cpu"]["benchmark"] = [{"n": 0, "b": 1, "c": 16, "h": 8, "mask": "some", "dist": "normal"}]
    cfg["timing"]["test"]["repeats"] = "many"
    cfg["sandbox"]["memory_mb"]["cpu"] = -5
    found = "\n".join(problems(cfg))
    for expected in ("task.device='tpu'", "task.tolerance.rtol=2", "task.examples.val=0",
                     "task.shapes.cpu.benchmark[0].n=0", "task.shapes.cpu.benchmark[0].mask='some'",
                     "task.timing.test.repeats='many'", "task.sandbox.memory_mb.cpu=-5"):
        assert expected in found, expected
    assert "must be one of auto, cpu, cuda" in found


def test_cuda_settings_use_the_leaderboard_shapes_and_a_compiler_friendly_sandbox():
    cfg = yaml.safe_load(CONF.read_text())
    cfg["device"] = "cuda"     # settings only: nothing here touches a GPU
    settings = Settings.from_cfg(cfg)
    shapes = [(c.n, c.b, c.c, c.h, c.mask, c.dist) for c in settings.benchmark]
    assert shapes == [(256, 2, 128, 128, "none", "normal"), (768, 1, 128, 128, "none", "cauchy"),
                      (256, 2, 384, 128, "random", "normal"), (512, 1, 128, 128, "none", "normal"),
                      (1024, 1, 128, 128, "none", "cauchy"), (768, 1, 384, 128, "random", "normal"),
                      (1024, 1, 384, 128, "none", "normal")]
    spec = settings.sandbox_spec()
    assert spec["memory_mb"] == 0 and spec["strict"] is True   # CUDA maps huge address ranges
    assert spec["exec_paths"] and settings.child_env()["TRITON_INTERPRET"] == "0"
    assert settings.start_s >= 600                                 # load_inline / Triton compiles
    cpu = Settings.from_cfg(small_cfg())
    assert cpu.child_env()["TRITON_INTERPRET"] == "1" and cpu.sandbox_spec()["memory_mb"] == 4096


def test_splits_are_attempts_and_public_resources_hold_the_contract_not_seeds():
    splits = TASK.load()
    assert [len(splits.train), len(splits.val), len(splits.test)] == [4, 2, 2]
    assert splits.val[1].inputs["attempt"] == 1 and splits.val[0].inputs["device"] == "cpu"
    resources = TASK.public_resources(splits)
    text = json.dumps(resources)
    assert "custom_kernel(data)" in resources["contract"] and "out_proj" in resources["contract"]
    assert "sum_k left" in resources["operator"]
    assert len(resources["shapes"]["benchmark"]) == 7
    assert not re.search(r'"\w*seed\w*"\s*:', text)     # no seed values anywhere
    assert "cpu" in TASK.data_label


# ---- the evaluator on honest submissions ---------------------------------------------------

@needs_sandbox
def test_reference_and_fast_baseline_pass_in_the_sandbox_and_are_timed():
    ref = judge(REFERENCE_SOURCE)
    fast = judge((TASKS_DIR / "cuda_kernel" / "fast_baseline.py").read_text())
    for verdict in (ref, fast):
        assert verdict.ok, verdict.reason
        assert verdict.device == "cpu" and list(verdict.case_us) == [Case(**BENCH).label]
        assert 0 < verdict.runtime_us < 5e6
    print(f"\nCPU (tiny test shape): reference {ref.runtime_us:.0f} µs, fast baseline "
          f"{fast.runtime_us:.0f} µs, judged in {ref.eval_s:.1f} s / {fast.eval_s:.1f} s")


@needs_sandbox
def test_triton_kernel_passes_through_the_interpreter():
    verdict = judge(submission("triton_correct.py"), small_cfg(correctness=(MASKED, CAUCHY), repeats=1))
    assert verdict.ok, verdict.reason


@needs_sandbox
def test_cpp_extension_through_load_inline_compiles_in_the_sandbox():
    cfg = small_cfg(correctness=(MASKED,), repeats=1)
    cfg["timeouts"]["cpu"]["start_s"] = 300
    verdict = judge(submission("cpp_inline.py"), cfg)
    assert verdict.ok, verdict.reason


# ---- failure reasons -------------------------------------------------------------------------

def test_syntax_error_is_a_compile_error_with_its_line():
    verdict = judge(submission("syntax_error.py"))
    assert (verdict.ok, verdict.kind) == (False, "compile")
    assert verdict.reason.startswith("compile error: SyntaxError at line 4")


@needs_sandbox
def test_error_while_importing_is_a_compile_error_with_its_line():
    verdict = judge(submission("import_error.py"))
    assert verdict.kind == "compile"
    assert "NameError" in verdict.reason and "build_the_kernel" in verdict.reason
    assert "submission line 4" in verdict.reason


@needs_sandbox
def test_missing_entry_point_is_a_contract_violation():
    verdict = judge(submission("no_kernel.py"))
    assert verdict.kind == "contract"
    assert "no callable custom_kernel" in verdict.reason


def test_markdown_answer_is_rejected_with_a_hint():
    verdict = judge(completion("fast_correct"))
    assert verdict.kind == "compile" and "extract the code block" in verdict.reason


@needs_sandbox
def test_wrong_values_name_the_case_the_count_and_the_worst_element():
    verdict = judge(submission("wrong_result.py"))
    assert verdict.kind == "wrong"
    assert verdict.reason.startswith(f"wrong result: on {Case(**NORMAL).label}, ")
    assert re.search(r"\d+ of 1024 checked values differ", verdict.reason)
    assert re.search(r"worst at \[b=0, i=\d+, j=\d+, c=\d+\], where it returned -?[\d.e+-]+$", verdict.reason)
    assert "expected" not in verdict.reason   # no reference value reaches the feedback side


@needs_sandbox
def test_wrong_shape_is_a_wrong_result():
    verdict = judge(submission("wrong_shape.py"))
    assert verdict.kind == "wrong" and "shape [1, 8, 8, 1], expected [1, 8, 8, 16]" in verdict.reason


@needs_sandbox
def test_hanging_kernel_times_out_and_is_killed():
    # It answers its first call (which may compile, so it gets start_s), then hangs (call_s).
    verdict = judge(submission("hangs.py"), small_cfg(call_s=3))
    assert verdict.kind == "timeout"
    assert verdict.reason == f"timeout: no reply within 3 s while running custom_kernel on {Case(**MASKED).label}"
    assert verdict.eval_s < 30


@needs_sandbox
def test_segfault_is_a_crash_with_signal_and_last_output():
    verdict = judge(submission("segfault.py"))
    assert verdict.kind == "crash"
    assert "killed by signal SIGSEGV while running custom_kernel" in verdict.reason
    assert "about to dereference NULL" in verdict.reason


@needs_sandbox
def test_helper_processes_do_not_outlive_the_judgement():
    def helpers() -> list[str]:
        alive = []
        for entry in Path("/proc").iterdir():
            try:
                if b"sia-cuda-kernel-helper-marker" in (entry / "cmdline").read_bytes():
                    alive.append(entry.name)   # a reaped or zombie helper has no cmdline left
            except OSError:
                pass
        return alive

    verdict = judge(submission("spawns_helper.py"))
    assert verdict.kind == "wrong"
    deadline = time.monotonic() + 3      # SIGKILL is delivered asynchronously
    while helpers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert helpers() == []


# ---- hostile submissions -------------------------------------------------------------------

@needs_sandbox
def test_hostile_calling_or_scanning_for_the_reference_is_rejected():
    verdict = judge(submission("call_reference.py"))
    assert (verdict.ok, verdict.kind) == (False, "wrong"), verdict.reason
    assert "returned 0" in verdict.reason      # every route to the reference failed: it fell back to zeros


@needs_sandbox
def test_hostile_caching_outputs_across_calls_is_rejected():
    verdict = judge(submission("cache_outputs.py"))
    assert verdict.kind == "wrong", verdict.reason
    # The first call of each shape is right; a later call with fresh inputs gets the stale output.
    assert Case(**BENCH).label in verdict.reason or Case(**NORMAL).label not in verdict.reason


@needs_sandbox
def test_hostile_patching_torch_comparisons_and_clocks_is_rejected():
    verdict = judge(submission("patch_torch.py"))
    assert verdict.kind == "wrong", verdict.reason


@needs_sandbox
def test_hostile_reading_evaluator_files_or_environment_finds_nothing(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-not-for-children")
    monkeypatch.setenv("SIA_EXPECTED_SEED", "1234")
    verdict = judge(submission("read_evaluator.py"))
    assert "leaked" not in verdict.reason, verdict.reason
    assert verdict.kind == "wrong" and "returned 0" in verdict.reason


@needs_sandbox
def test_hostile_seed_guessing_is_rejected_yet_works_when_seeds_are_guessable():
    source = submission("seed_guess.py")
    verdict = judge(source)
    assert verdict.kind == "wrong", verdict.reason
    # Control: with a predictable seed the same file is accepted, so the secret seeds are
    # what defeats it.
    assert judge(source, seeds=lambda: 7).ok


@needs_sandbox
@pytest.mark.parametrize("name, caught_on, other_cases", [
    ("ignores_mask.py", MASKED, (NORMAL, CAUCHY)),    # ignoring the mask is right on unmasked cases
    ("clamps_inputs.py", CAUCHY, (NORMAL, MASKED)),   # clamping inputs is right without heavy tails
])
def test_hostile_shortcut_passes_the_cases_it_fits_but_is_rejected_on_the_case_it_breaks(name, caught_on,
                                                                                          other_cases):
    source = submission(name)
    verdict = judge(source)
    assert verdict.kind == "wrong" and f"on {Case(**caught_on).label}," in verdict.reason
    assert judge(source, small_cfg(correctness=other_cases, benchmark=other_cases[1:])).ok


@needs_sandbox
def test_hostile_lazy_output_filled_after_the_call_returns_is_rejected():
    verdict = judge(submission("lazy_output.py"))
    assert verdict.kind == "wrong", verdict.reason


@needs_sandbox
def test_hostile_runner_patch_completing_the_output_after_the_call_fails_the_checksum():
    verdict = judge(submission("patch_runner.py"))
    assert verdict.kind == "wrong", verdict.reason
    # Every fetched row was right: only the timed call's checksum gives it away.
    assert verdict.reason.endswith("it was completed or changed after the call returned"), verdict.reason


def test_checksum_binds_the_fetched_output_to_the_timed_call():
    from sia_tasks.cuda_kernel.checksum import digest, matches

    case = Case(n=48, b=2, c=32, h=16, mask="random", dist="cauchy")
    out = reference.trimul_reference(*random_data(case))
    u, v = inputs.position_weights(case, 5)
    committed = digest(out, u, v)
    assert matches(committed, out.clone(), u, v)
    assert matches(committed, out.double().float(), u, v)   # a float round trip changes nothing
    one_row = out.clone()
    one_row[1, 7, 30] *= 0.99                                 # a single row, off by 1%
    assert not matches(committed, one_row, u, v)
    assert not matches(float("nan"), out, u, v) and not matches(None, out, u, v)


# ---- task.evaluate and the seed harness ----------------------------------------------------

class FakeLLM:
    def __init__(self, texts):
        self.texts = list(texts)
        self.calls = []

    def chat(self, messages, **kwargs):
        self.calls.append({"messages": messages, **kwargs})
        return SimpleNamespace(text=self.texts.pop(0))


def fake_ctx(texts):
    ctx = SimpleNamespace(llm=FakeLLM(texts), resources=TASK.public_resources(TASK.load()), logs=[])
    ctx.log = lambda kind, **data: ctx.logs.append((kind, data))
    return ctx


def run_seed_harness(texts, inputs=None, **options):
    ctx = fake_ctx(texts)
    saved = dict(seed_harness.OPTIONS)
    seed_harness.OPTIONS.update(options)
    try:
        answer = seed_harness.solve(inputs or TASK.load().val[0].inputs, ctx)
    finally:
        seed_harness.OPTIONS.clear()
        seed_harness.OPTIONS.update(saved)
    return answer, ctx


def test_seed_harness_prompts_with_the_contract_and_extracts_the_code():
    answer, ctx = run_seed_harness([completion("fast_correct")])
    assert answer.startswith("import torch") and "def custom_kernel(data)" in answer and "```" not in answer
    prompt = ctx.llm.calls[0]["messages"][-1]["content"]
    assert "norm_in_weight" in prompt and "evaluation device is cpu" in prompt and "TRITON_INTERPRET=1" in prompt
    assert ctx.llm.calls[0]["max_tokens"] == seed_harness.OPTIONS["max_tokens"]


def test_seed_harness_returns_invalid_code_for_the_evaluator_unless_the_fallback_is_on():
    answer, ctx = run_seed_harness([completion("broken")])
    assert "def _tri(" in answer and ctx.logs[0][0] == "invalid_submission"
    assert "does not parse" in ctx.logs[0][1]["reason"]
    answer, _ = run_seed_harness(["I cannot help with that."])
    assert answer is None
    answer, ctx = run_seed_harness(["no code here"], fallback_template=True)
    assert answer == seed_harness.TEMPLATE and ctx.logs[-1][0] == "fallback_template"
    answer, ctx = run_seed_harness(["no code here", completion("slow_correct")], retries=1)
    assert "for j in range(n)" in answer and len(ctx.llm.calls) == 2


def test_seed_harness_template_is_correct():
    data = random_data(Case(**MASKED))
    scope = {}
    exec(seed_harness.TEMPLATE, scope)
    torch.testing.assert_close(scope["custom_kernel"](data), reference.trimul_reference(*data))


def test_harness_edits_rewrite_the_options():
    source = TASK.seed_harness()
    edits = {e.name: e for e in TASK.harness_edits()}
    assert {e.addresses for e in edits.values()} == {"format", "errors", "accuracy"}
    assert read_options(edits["fallback_template"].apply(source))["fallback_template"] is True
    assert read_options(edits["worked_skeleton"].apply(source))["include_skeleton"] is True
    assert read_options(edits["batched_matmul_strategy"].apply(source))["strategy"] == "batched_matmul"
    edited = edits["batched_matmul_strategy"].apply(source)
    assert edits["batched_matmul_strategy"].apply(edited) is None   # applying twice changes nothing


@needs_sandbox
def test_evaluate_scores_recorded_completions_and_reports_every_reason():
    """The four scripted answers of a recorded feedback, through the seed harness and
    task.evaluate: only the correct ones score, the fast one best; each failure has its reason."""
    task = load_task("cuda_kernel", small_cfg(correctness=(MASKED, CAUCHY), benchmark=(
        {"n": 64, "b": 1, "c": 64, "h": 32, "mask": "random", "dist": "normal"},), repeats=3))
    names = ["broken", "slow_correct", "fast_correct", "hack", "fast_correct"]
    answers = [run_seed_harness([completion(n)])[0] for n in names] + [None]
    examples = [SimpleNamespace(id=f"val-{i}") for i in range(len(answers))]
    report = task.evaluate(examples, answers, "val")
    by_name = dict(zip(names + ["none"], report.per_example))
    assert by_name["broken"].score == 0 and by_name["broken"].reason.startswith("compile error: SyntaxError")
    assert by_name["hack"].score == 0 and by_name["hack"].reason.startswith("wrong result:")
    assert by_name["none"].score == 0 and by_name["none"].reason.startswith("no submission")
    slow, fast = by_name["slow_correct"], by_name["fast_correct"]
    assert 0 < slow.score < fast.score < 1
    assert fast.reason == "" if fast.details["speedup"] > 1 else fast.reason.startswith("correct but not faster")
    assert slow.reason.startswith("correct but not faster than the reference (")
    # Failure kinds: unreadable -> format; ran but wrong, or right but not faster -> wrong.
    # (fast beats the reference on an idle CPU; on a loaded one its margin is within noise)
    fast_kind = None if fast.details["speedup"] > 1 else "wrong"
    assert [by_name[n].failure for n in ("broken", "none", "hack", "slow_correct", "fast_correct")] == \
        ["format", "format", "wrong", "wrong", fast_kind]
    assert fast.details["speedup"] > 1.5 * slow.details["speedup"]
    assert report.per_example[4].details == fast.details      # identical answers judged once
    assert report.metrics["correct"] == pytest.approx(3 / 6)
    assert report.metrics["best_speedup"] == pytest.approx(fast.details["speedup"])
    assert report.metrics["speedup"] == pytest.approx(sum(e.details["speedup"] for e in report.per_example) / 6)
    assert report.notes["device"] == "cpu" and report.notes["figures"].startswith("CPU figures")
    assert report.notes["verdicts"] == {"compile": 1, "ok": 3, "wrong": 1, "no_submission": 1}
    print(f"\nCPU recorded feedback: slow {slow.details['speedup']:.2f}x, fast {fast.details['speedup']:.2f}x "
          f"the reference; evaluate took {report.metrics['eval_seconds']:.1f} s")


def test_failure_kinds_follow_the_verdict_and_the_speedup():
    from sia_tasks.cuda_kernel.judge import PREFIX, Verdict
    from sia_tasks.cuda_kernel.task import failure_kind, score_reason

    unreadable = {"no_submission", "compile", "contract", "sandbox", "setup", "evaluator"}
    for kind in PREFIX:
        expected = "format" if kind in unreadable else "wrong"
        assert failure_kind(Verdict(False, kind, f"{PREFIX[kind]}: x"), 0.0) == expected, kind
    ok = Verdict(True, "ok", "")
    assert failure_kind(ok, 0.8) == "wrong" and score_reason(ok, 0.8) == "correct but not faster than the reference (0.80x its speed)"
    assert failure_kind(ok, 1.3) is None and score_reason(ok, 1.3) == ""
