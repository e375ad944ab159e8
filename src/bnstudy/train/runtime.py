"""Where and how a job computes: device, threads, numeric precision. Shared by training and the
analyses, so both read `runtime` the same way.
"""

from __future__ import annotations

import contextlib

import torch

from ..config.spec import RuntimeSpec


def resolve_device(runtime: RuntimeSpec) -> torch.device:
    """`auto` = CUDA, then MPS, then CPU; an explicit device that is absent is an error."""
    want = runtime.device
    if want == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device=cuda but no CUDA device is visible; use auto or cpu")
    return torch.device(want)


def set_threads(runtime: RuntimeSpec, job_threads: int = 0) -> int:
    """torch's intra-op threads: `runtime.threads` when the config sets it (> 0), else the cores
    Snakemake gave the job (`--threads`), else torch's default. Returns the number in use."""
    wanted = runtime.threads or job_threads
    if wanted:
        torch.set_num_threads(wanted)
    return torch.get_num_threads()


def cpu_has_bf16() -> bool:
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast on CUDA, and on CPUs with native bf16 (AVX512-BF16/AMX: oneDNN runs the
    convolutions in bf16); fp32/tf32 (or a CPU without bf16 units) runs as is."""
    if precision != "bf16":
        return contextlib.nullcontext()
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def conv_precision(device: torch.device, precision: str):
    """cuDNN's float32 convolutions: IEEE fp32 unless `precision` is tf32 (a fresh context each call).

    PyTorch lets cuDNN use TF32 (10-bit mantissa products) for float32 convolutions by default;
    the paper's 2018 GPUs had no TF32, so `fp32` means IEEE fp32 here and `tf32` is the opt-in
    for speed. (The analyses use `exact_numerics`: IEEE fp32 and deterministic.)
    """
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled,
                                      benchmark=torch.backends.cudnn.benchmark,
                                      deterministic=torch.backends.cudnn.deterministic,
                                      allow_tf32=precision == "tf32")


def exact_numerics(device: torch.device | str):
    """On CUDA: IEEE float32 convolutions (no TF32) and deterministic cuDNN algorithms, so that
    differences between analysis probe points are differences of the loss surface, not of
    rounding or of the algorithm cuDNN picked. A no-op elsewhere."""
    if torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    return torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False)
