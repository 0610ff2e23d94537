"""Small reference models shipped with onnx-eprune (installed as ``onnx_eprune.models``)."""
