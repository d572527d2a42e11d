"""The ONNX side: export (:mod:`.export`; segmentation and detection models, detection's post-processing included:
:mod:`.dense`), the ``com.adderconvert`` op schemas and reference (:mod:`.ops`) and the ONNX Runtime library that
runs them (:mod:`.runtime`)."""
