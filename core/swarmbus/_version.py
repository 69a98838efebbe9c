"""The version of the core distribution (a module of its own, so that importing it pulls in nothing)."""

__version__ = "0.1.0"
