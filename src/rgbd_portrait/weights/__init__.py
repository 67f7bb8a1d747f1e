"""Weights shipped inside the package: the embedded default model lives in `default/` (a model folder)."""

from pathlib import Path


def default_model_dir() -> Path:
    """Where the shipped default model lives inside the installed package (it may not be there)."""
    return Path(__file__).resolve().parent / "default"
