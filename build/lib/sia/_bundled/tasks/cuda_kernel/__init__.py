"""Bundled task ``cuda_kernel``: a faster AlphaFold3 TriMul kernel, judged in a sandboxed child.

Deliberately empty: the evaluator's child imports this package (for ``runner`` and
``inputs``) and must never get the reference implementation into its memory by accident.
"""
