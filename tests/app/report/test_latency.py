"""The cost report's ONNX Runtime timings: a model of a fixed batch (an R-CNN exports with one) is timed at that batch
only, and says so, instead of failing at every batch the run asks for."""

import onnx
from onnx import TensorProto, helper

from adderconvert.app.report.latency import fixed_batch, latency_table


def _relu(path, batch):
    """An ONNX model of one Relu over images of 8 px, of batch ``batch`` (a name: dynamic)."""
    values = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [batch, 3, 8, 8]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", values[:1], values[1:])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_a_fixed_batch_model_is_timed_at_its_batch_only(tmp_path):
    fixed, dynamic = _relu(tmp_path / "fixed.onnx", 2), _relu(tmp_path / "dynamic.onnx", "N")
    assert fixed_batch(fixed) == 2 and fixed_batch(dynamic) is None
    notes = []
    rows = latency_table({"cnn": dynamic, "adder": fixed, "int8": None}, 8, [1, 4], 0.05, notes)
    assert rows and {(row["batch"], row["fixed_batch"]) for row in rows} == {(2, True)}
    assert all(row["cnn_ms"] > 0 and row["adder_ms"] > 0 and row["int8_ms"] is None for row in rows)
    assert notes == ["the adder ONNX model(s) take a fixed batch of 2: latency measured at that batch only"]
    notes = []
    rows = latency_table({"cnn": dynamic, "adder": dynamic}, 8, [1, 4], 0.05, notes)
    assert [row["batch"] for row in rows][:2] == [1, 4] and not any(row["fixed_batch"] for row in rows)
    assert notes == []


def test_a_model_that_fails_is_noted_on_one_line(tmp_path):
    """ONNX Runtime's errors run to many lines: the note keeps the first."""
    notes = []
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    rows = latency_table({"cnn": _relu(tmp_path / "m.onnx", "N"), "adder": tmp_path / "bad.onnx"}, 8, [1], 0.05, notes)
    assert rows[0]["cnn_ms"] > 0 and rows[0]["adder_ms"] is None
    assert len(notes) == 1 and notes[0].startswith("adder ONNX not measured: ") and "\n" not in notes[0], notes
