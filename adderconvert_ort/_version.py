"""The version of adderconvert and adderconvert-ort (both pyproject.toml files read it from here)."""

__version__ = "0.1.0"
