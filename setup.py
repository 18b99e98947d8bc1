"""Builds the optional fused CPU kernels (backlm/model/_native.c); everything else is in pyproject.toml.

``optional=True``: without a C compiler or OpenMP the build is skipped with a warning and
backlm uses the equivalent PyTorch ops (backlm/model/kernels.py), only slower on CPU.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "backlm.model._native",
            sources=["backlm/model/_native.c"],
            depends=["backlm/model/_native_body.h", "backlm/model/_native_decode.h",
                     "backlm/model/_native_decode_mm.h"],
            # no -march=native: the module picks AVX-512 / AVX2 / generic code at import time
            extra_compile_args=["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math",
                                "-std=gnu11"],
            extra_link_args=["-fopenmp"],
            optional=True,
        )
    ]
)
