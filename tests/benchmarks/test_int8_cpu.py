"""benchmarks/int8_cpu.py: the markdown of an accuracy-only run."""

import importlib.util
import sys
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "int8_cpu.py"
_spec = importlib.util.spec_from_file_location("int8_cpu", _PATH)
int8_cpu = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("int8_cpu", int8_cpu)
_spec.loader.exec_module(int8_cpu)


def _result():
    row = {"model": "resnet18", "dataset": "fashion-mnist", "fp32_top1": 88.0}
    row.update({"int8_percentile_top1": 87.9, "int8_percentile_agreement": 99.5})
    return {
        "cpu": {
            "model_name": "a CPU",
            "cores": 2,
            "isa": ["avx2"],
            "quantized_kernel_isa": "avx2",
            "kernel_isa": "avx2",
        },
        "onnxruntime": "1.0",
        "spin": False,
        "repeats": 20,
        "model_repeats": 10,
        "command": "python benchmarks/int8_cpu.py",
        "load_before": None,
        "layers": [],
        "models": [],
        "accuracy": [row],
        "calibration_batches": 16,
    }


def test_accuracy_only_table_names_no_timing_settings():
    text = int8_cpu.markdown(_result())
    assert "median of" not in text and "idle threads" not in text
    assert "| resnet18 | fashion-mnist | 88.00% | 87.90% (-0.10) | 99.50% |" in text
