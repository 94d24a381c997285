"""SIA: self-improving AI agents (a harness lever and a weights lever in one loop)."""
import os

# OpenMP threads that spin while waiting make torch many times slower whenever the CPU is
# shared (harness workers, evaluator children); this must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
