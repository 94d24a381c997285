"""TEMPORARY (until main selects engines by ``_target_``): with ``PYTHONPATH=tests/support``,
``model.engine=echo`` runs the loop on tests/support/echo_engine.py. Python imports this file
at start-up; it patches sia's engine factory, engine-name check and SFT trainer right after
those modules load, so the rest of sia runs unchanged. Harness workers never see it (their
environment is scrubbed)."""
import importlib.abc
import importlib.util
import sys


def _patch(module):
    name = module.__name__
    if name == "sia.config":
        module.ENGINES = tuple(module.ENGINES) + ("echo",)
    elif name == "sia.engine":
        real = module.build_engine

        def build_engine(model_cfg, cache_dir):
            if model_cfg.engine == "echo":
                from echo_engine import EchoEngine

                return EchoEngine(model_cfg=model_cfg, cache_dir=cache_dir)
            return real(model_cfg, cache_dir)

        module.build_engine = build_engine
    elif name == "sia.train.sft":
        real_train = module.train_sft

        def train_sft(model_cfg, *args, **kwargs):
            if model_cfg.engine == "echo":
                from echo_engine import echo_train_sft

                return echo_train_sft(model_cfg, *args, **kwargs)
            return real_train(model_cfg, *args, **kwargs)

        module.train_sft = train_sft


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        _patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    targets = {"sia.config", "sia.engine", "sia.train.sft"}

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.targets:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


sys.meta_path.insert(0, _Finder())
