"""Golden request files: the Meta-Agent's and the Feedback-Agent's requests for every bundled
task, so a prompt change is a reviewable diff. Regenerate with ``python -m tests.golden.regen``."""
