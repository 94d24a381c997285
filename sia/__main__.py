"""``python -m sia [overrides]``: compose the Hydra config and run the loop."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

import sia.schema  # noqa: F401  (registers the config schemas)
from sia.paths import conf_dir


def _run_dir(resume, default):
    """Hydra's output dir: the resumed run's own dir, else a new timestamped one."""
    return str(resume) if resume not in (None, "", "null") else default


OmegaConf.register_new_resolver("sia_run_dir", _run_dir, replace=True)


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def main(cfg: DictConfig) -> None:
    from sia.app import run

    code = run(cfg)
    if code:
        sys.exit(code)


def cli() -> None:
    """The ``sia`` console script and ``python -m sia``."""
    from sia.build import normalise_overrides
    from sia.config import ConfigError, precheck_overrides

    sys.argv[1:] = normalise_overrides(sys.argv[1:])
    problems = precheck_overrides(sys.argv[1:])
    if problems:
        print(f"sia: {ConfigError(problems)}", file=sys.stderr)
        sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
