"""raymem: label memorization and influence estimates (Feldman & Zhang 2020) on Ray."""

__version__ = "0.1.0"
