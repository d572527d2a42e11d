"""The stages of a run whose metric its ``summary.json`` holds (``cnn_top1``, ..., ``int8_miou``), in order, with
their labels: one list for the main job's closing table and the cost report."""

from __future__ import annotations

__all__ = ["STAGES"]

# (the summary key's prefix, its label)
STAGES: tuple[tuple[str, str], ...] = (
    ("cnn", "CNN (teacher, PyTorch)"),
    ("zero_step", "AdderNet before fine-tuning (PyTorch)"),
    ("adder", "AdderNet (PyTorch)"),
    ("onnx", "AdderNet (ONNX Runtime)"),
    ("int8", "AdderNet INT8 (ONNX Runtime)"),
)
