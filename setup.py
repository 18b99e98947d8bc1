"""Builds the optional fused CPU kernels (backlm/_native.c); everything else is in pyproject.toml.

``optional=True``: without a C compiler or OpenMP the build is skipped with a warning and
backlm uses the equivalent PyTorch ops (backlm/kernels.py), only slower on CPU.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "backlm._native",
            sources=["backlm/_native.c"],
            depends=["backlm/_native_body.h"],
            # no -march=native: the module picks AVX-512 / AVX2 / generic code at import time
            extra_compile_args=["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math",
                                "-std=gnu11"],
            extra_link_args=["-fopenmp"],
            optional=True,
        )
    ]
)
