"""specdecode's compiled CPU kernels (specdecode/csrc/): the small-rows projection and the row-exact
attention, built on first use with the machine's C++ compiler (AVX-512 or AVX2; about a minute once,
then cached by PyTorch)."""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)
SOURCES = [
    Path(__file__).parent / "csrc" / name
    for name in ("small_rows_linear.cpp", "block_linear.cpp", "row_attention.cpp", "decoder.cpp", "bindings.cpp")
]


@cache
def extension():
    """The compiled module, or None if it cannot be built here (stock kernels still give exact results)."""
    from torch.utils.cpp_extension import load

    try:
        return load(
            name="specdecode_kernels",
            sources=[str(path) for path in SOURCES],
            extra_cflags=["-O3", "-march=native", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as err:  # no compiler, no AVX2
        log.warning("fast CPU kernels unavailable (%s); using stock PyTorch kernels", err)
        return None
