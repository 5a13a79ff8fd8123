"""Custom kernels for the serving hot paths, one op per module.

Each op has a numpy reference (its memory traffic written down) and faster providers behind
one registry (`warpserve.kernels.registry`): Numba on the CPU, Triton-lang and CuPy on the
GPU. Ops take numpy arrays or torch tensors and answer in the same kind; CUDA tensors stay
on the GPU. Bad input raises `KernelInputError` naming the argument.

- `mlp.fused_linear`: act(x @ W.T + b) and `mlp.FusedMLP`, a stack of such layers.
- `topk.score_topk`: the k best items per user without materialising all scores.
- `preprocess.preprocess_images`: uint8 NHWC → bilinear resize → normalise → NCHW.

This package never imports `warpserve.server`; the kernel backend there depends on it.
"""
