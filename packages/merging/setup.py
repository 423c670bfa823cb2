"""The one thing pyproject.toml cannot declare: the C merge kernels, built as tbi_merging._ckernels."""

import sys

from setuptools import Extension, setup

# -ffp-contract=off: a fused multiply-add would round once where the merge formulas round twice.
flags = [] if sys.platform == "win32" else ["-O3", "-std=gnu11", "-ffp-contract=off"]
setup(
    ext_modules=[
        Extension("tbi_merging._ckernels", ["src/tbi_merging/_ckernels.c"], extra_compile_args=flags)
    ]
)
