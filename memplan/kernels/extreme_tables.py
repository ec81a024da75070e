"""The layout of an extreme-tensoring kernel call, shared by :mod:`memplan.kernels.extreme_cpu`,
which builds the call's tables, and :mod:`memplan.kernels.extreme_numba`, which reads them. It
imports nothing, so a child process compiling a kernel (:func:`memplan.kernels.jit.compile_in_child`)
starts without torch. numba freezes these values into a kernel when it compiles it, and checks only
the kernel's own file for changes: after changing one here, clear numba's cache.
"""

ADD_SUMS, STORE_ACCUMULATORS = 0, 1
"""What pass 1 does with each range's slice sums: add them to output vectors, or fold them into
the range's accumulators and rescale those for pass 2 (:func:`memplan.kernels.extreme_cpu.et_many`)."""

RANGE_FIELDS = ("start", "length", "first_axis", "axes", "head", "tail", "slot", "width")
"""The columns of a call's range table: the range's first element in its index and its length,
its index's first row in the axis table and its axes (the order p), the head axes (walked one by
one), the elements of a run (the product of the trailing axes), and the offset and count of its
per-slice values (sums, scaled accumulators, roots: one per slice of every axis) in a call's
vectors."""
AXIS_FIELDS = ("dim", "offset")
"""The columns of a call's axis table, one row per axis of every range: its length, and the offset
of its slices among its range's (the axes' in order)."""
SCALARS = ("lr", "momentum", "decay", "coupled", "grad_sign", "keep", "alpha", "eps")
"""The columns of a call's per-range scalars (float64): the update's, then the accumulators'
S <- keep S + alpha sums, and eps."""
CORRECTIONS = ("scale", "offset", "sqrt2_root", "offset_root")
"""The columns of a call's per-range corrections (float64): the scale and offset of
:func:`memplan.optim.extreme._scaled_factors`, and for orders other than 1, 2 and 4, 2^(a/2) and
offset^a 2^(a/2) (a = -1 / (2p); see the module docstring)."""
INFINITY_SCALARS = ("lr", "decay", "coupled", "grad_sign", "keep", "alpha", "eps")
"""The columns of an ET-infinity call's per-tensor scalars (float64): the update's, then the
accumulator's s <- keep s + alpha ||G||^2, and eps."""
