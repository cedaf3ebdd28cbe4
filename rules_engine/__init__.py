"""rules-engine: declarative rules for LLM inference fleets, backtested over Prometheus history."""

__version__ = "0.1.0"
