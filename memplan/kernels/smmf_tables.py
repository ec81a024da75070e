"""The layout of an SMMF kernel call, shared by :mod:`memplan.kernels.smmf_cpu`, which builds the
call's tables, and :mod:`memplan.kernels.smmf_numba`, which reads them. It imports nothing, so a
child process compiling a kernel (:func:`memplan.kernels.jit.compile_in_child`) starts without
torch. numba freezes these values into a kernel when it compiles it, and checks only the kernel's
own file for changes: after changing one here, clear numba's cache.
"""

NO_SIGNS, PACKED_SIGNS, BYTE_SIGNS = 0, 1, 8
"""How the range's signs are stored: none (no first moment), 8 per byte, one byte each."""

ADDRESSES = ("weights", "grads", "signs", "row_v", "col_v", "row_m", "col_m", "out_row_v", "out_col_v", "out_row_m",
             "out_col_m")
"""The columns of a call's address table, one row per range (0 where a range has no such tensor)."""
SCALARS = ("step_size", "eps", "decay", "coupled", "grad_sign", "prior_v", "prior_m", "keep_v", "keep_m")
"""The columns of a call's per-range scalars (float64; cast to the weights' dtype in the kernel)."""
ADD_SUMS, STORE_FACTORS = 0, 1
"""What a call does with each range's row and column sums: add them to the output vectors, or
turn them into the new, normalised factors and store those."""
