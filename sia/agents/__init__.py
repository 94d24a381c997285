"""Meta and feedback agents: decisions, trajectory digests, offline feedback agents."""
