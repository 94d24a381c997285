"""SIA: self-improving AI agents (a harness lever and a weights lever in one loop)."""
__version__ = "0.1.0"
