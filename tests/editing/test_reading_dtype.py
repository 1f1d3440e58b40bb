"""Which dtype a read-only copy of the model gets (the canaries' KEDIT_CANARY_DTYPE=auto): bf16 only
where its matmuls are fast, known from the CPU's flags or a CUDA device."""

import torch

from app.editing.model import bf16_is_fast, reading_dtype

AVX2_EPYC = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\nprocessor\t: 1\nflags\t\t: fpu sse avx avx2\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"


def test_bf16_is_fast_on_cuda_and_on_cpus_with_bf16_units_only():
    assert bf16_is_fast("cuda") and bf16_is_fast("cuda:1", cpuinfo="")
    assert bf16_is_fast("cpu", cpuinfo=SAPPHIRE_RAPIDS)
    assert not bf16_is_fast("cpu", cpuinfo=AVX2_EPYC)
    assert not bf16_is_fast("cpu", cpuinfo="")  # nothing known: float32, never the slow case


def test_named_dtypes_are_kept_and_auto_follows_the_machine():
    assert reading_dtype("float32", "cpu") is torch.float32
    assert reading_dtype("bfloat16", "cpu") is torch.bfloat16
    assert reading_dtype("auto", "cuda") is torch.bfloat16
    assert reading_dtype("auto", "cpu") is (torch.bfloat16 if bf16_is_fast("cpu") else torch.float32)
