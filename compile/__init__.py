"""warpserve compile: a trained PyTorch model in, the fastest verified variant written out.

The pipeline (``pipeline.compile_model``) loads or takes a module, exports it once with
``torch.export`` (dynamic batch axis), builds each requested variant (ONNX, ONNX Runtime
optimised and INT8, TensorRT, AOTInductor, TorchScript), checks each against eager PyTorch,
measures each through the server's own backend classes over a sweep of batch sizes, and
writes the best into a Triton-layout model repository with a report.

Nothing here starts a server or imports the gRPC layer.
"""
