"""The package version (a leaf: every ring records it in its outputs' provenance)."""

__version__ = "0.1.0"
