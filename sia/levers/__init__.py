"""The levers a feedback decision pulls besides rewriting the harness."""
