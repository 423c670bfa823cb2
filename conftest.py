"""Settings shared by every test of the workspace, applied before any test module is imported."""

import os
import shutil

# Without a GPU, Triton kernels run only in Triton's interpreter. Triton reads TRITON_INTERPRET once, on first
# use, and torch or another package's tests may touch Triton before the kernel tests are collected: set it for
# the whole session. Machines with a GPU (nvidia-smi present) test the real kernels.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")
