"""The cost report: operation counts and energies (:mod:`.costs`), ONNX Runtime timings (:mod:`.latency`),
the run folder's report (:mod:`.run_report`) and its HTML page (:mod:`.html`)."""

from adderconvert.app.report.run_report import build_report, write_report

__all__ = ["build_report", "write_report"]
