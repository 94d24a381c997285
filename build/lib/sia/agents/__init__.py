"""Meta and feedback agents: decisions, trajectory digests, offline policies."""
