"""The ONNX Runtime CPU backend: export (with the calibration corpus), int8 recipes and their
fidelity gate, and the backend that runs the exported model."""

from embedding_assets.lib.encoders.base import UnsupportedModelError
from embedding_assets.lib.encoders.onnxrt.backend import OnnxBackend
from embedding_assets.lib.encoders.onnxrt.export import calibration_texts, export_model, pooling_of
from embedding_assets.lib.encoders.onnxrt.int8 import GATE_THRESHOLD, RECIPES

__all__ = ["GATE_THRESHOLD", "RECIPES", "OnnxBackend", "UnsupportedModelError", "calibration_texts", "export_model", "pooling_of"]
