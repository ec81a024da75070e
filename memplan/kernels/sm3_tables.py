"""The layout of an SM3 kernel call, shared by :mod:`memplan.kernels.sm3_cpu`, which builds the
call's tables, and :mod:`memplan.kernels.sm3_numba`, which reads them. It imports nothing, so a
child process compiling a kernel (:func:`memplan.kernels.jit.compile_in_child`) starts without
torch. numba freezes these values into a kernel when it compiles it, and checks only the kernel's
own file for changes: after changing one here, clear numba's cache.
"""

SM3_II, SM3_I, SQUARE_MAXIMA = 0, 1, 2
"""What a call computes: SM3-II's update and maxima of nu, SM3-I's update (no maxima), or SM3-I's
maxima of G^2 (no update)."""
ADD_MAXIMA, STORE_MAXIMA = 0, 1
"""What a call does with each range's maxima: max-combine them into the output vectors, or store
them (over the accumulators, once every thread has read those)."""

RANGE_FIELDS = ("start", "length", "first_axis", "axes", "head", "tail", "slot", "width")
"""The columns of a call's range table: the range's first element in its view and its length,
its view's first row in the axis table and its axes, the head axes (walked one by one), the
elements of a run (the product of the trailing axes), and the offset and count of its maxima in a
thread's partial vectors (one per slice of every axis)."""
AXIS_FIELDS = ("dim", "offset")
"""The columns of a call's axis table, one row per axis of every range: its length, and the offset
of its maxima among its range's (the axes' in order)."""
SCALARS = ("lr", "eps", "momentum", "dampening", "decay", "coupled", "grad_sign")
"""The columns of a call's per-range scalars (float64; cast to the weights' dtype in the kernel,
momentum to the buffer's fp32)."""
