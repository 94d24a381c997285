"""Hydra search-path plugin: the sweep configs (``+sweep=ablation``) are found wherever SIA is
installed, not only when ``python -m sia`` runs from a source checkout."""
from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class SiaSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from sia.paths import sweeps_dir

        search_path.append(provider="sia-sweeps", path=f"file://{sweeps_dir()}")
