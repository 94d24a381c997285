"""Text-to-SQL over a real SQLite database (synthetic shop database or Spider): question in,
one SQLite query out, scored by execution accuracy."""
