"""What a harness is told about a database: its CREATE statements, the tables with their
columns and foreign keys (for a compact one-line-per-table prompt), and a few sample values
per text column (so the model can match literals such as 'delivered' or 'Berlin')."""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from .execution import readonly_uri

SAMPLES_PER_COLUMN = 3
# Only categorical text columns get samples (status, city, category): values of free-text
# columns such as names or emails cost prompt tokens and match no question.
MAX_DISTINCT_FOR_SAMPLES = 30


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def describe_database(db_path: Path) -> dict[str, Any]:
    conn = sqlite3.connect(readonly_uri(db_path), uri=True)
    try:
        create, tables = [], []
        for name, sql in conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
                "ORDER BY rowid"):
            create.append(sql.strip() + ";")
            table = _quote_identifier(name)
            columns = [{"name": c[1], "type": c[2] or "", "pk": bool(c[5])}
                       for c in conn.execute(f"PRAGMA table_info({table})")]
            foreign_keys = [{"column": fk[3], "ref_table": fk[2], "ref_column": fk[4]}
                            for fk in conn.execute(f"PRAGMA foreign_key_list({table})")]
            samples = {}
            for col in columns:
                if "CHAR" not in col["type"].upper() and "TEXT" not in col["type"].upper():
                    continue
                ident = _quote_identifier(col["name"])
                counted = conn.execute(f"SELECT {ident}, COUNT(*) FROM {table} WHERE {ident} IS NOT NULL "
                                       f"GROUP BY {ident} ORDER BY COUNT(*) DESC, {ident} "
                                       f"LIMIT {MAX_DISTINCT_FOR_SAMPLES + 1}").fetchall()
                if 0 < len(counted) <= MAX_DISTINCT_FOR_SAMPLES:
                    samples[col["name"]] = [v if isinstance(v, (str, int, float)) else str(v)
                                            for v, _ in counted[:SAMPLES_PER_COLUMN]]
            tables.append({"name": name, "columns": columns, "foreign_keys": foreign_keys, "samples": samples})
        return {"create": "\n".join(create), "tables": tables}
    finally:
        conn.close()
