"""LLM agents: the Meta-Agent writes the first harness, the Feedback-Agent rewrites it from
trajectories. Claude through the ``anthropic`` SDK or any OpenAI-compatible endpoint.

    config.py        the ``llm`` block, prices, key_problems (config check before any work)
    backends.py      Anthropic Messages / OpenAI Chat Completions wire formats over the SDKs
    client.py        scrub -> response cache -> budget check (estimate before sending) -> send -> price -> ledger
    scrub.py         masks val/test target strings in every request
    cache.py         on-disk response cache in the run dir (a resumed run pays nothing twice)
    ledger.py        <run>/agents.jsonl, totals, would_exceed (the agent budget)
    prompts.py       instructions, tool schemas, request builders (run facts, levers, val-only history,
                     harness text quoted as untrusted data)
    trajectories.py  failure-first, stratified, token-budgeted trajectory rendering (train with gold)
    diff.py          SEARCH/REPLACE blocks or a unified diff, matched tolerantly, placed exactly once
    meta.py          LLMMetaAgent (MetaAgent)
    feedback.py      LLMFeedback (Feedback)
"""
from sia.agents.llm.config import key_problems, load_settings, settings_problems  # noqa: F401
