"""The ONNX side: export (:mod:`.export`), the ``com.adderconvert`` op schemas and reference (:mod:`.ops`) and
the ONNX Runtime library that runs them (:mod:`.runtime`)."""
