"""Shared fixtures: compose the real Hydra config the way `python -m sia` does."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import sia.__main__  # noqa: F401  (registers the sia_run_dir resolver)
from sia.build import normalise_overrides

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"


@pytest.fixture
def compose_cfg(tmp_path):
    """compose_cfg(*overrides) -> DictConfig with run_dir/cache_dir under tmp_path."""

    def _compose(*overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            return compose(config_name="config",
                           overrides=[f"run_dir={tmp_path / 'run'}", *normalise_overrides(list(overrides))])

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory) -> Path:
    """One converted copy of the embedded model per test session (converting takes ~30 s), shared by
    every test that loads it; SIA_CACHE_DIR names an already converted one to reuse instead."""
    shared = os.environ.get("SIA_CACHE_DIR")
    return Path(shared) if shared else tmp_path_factory.mktemp("sia_cache")
