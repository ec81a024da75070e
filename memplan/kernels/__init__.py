"""One-pass kernels for memplan's optimizers, each on a flat range of a parameter's layout view.

Every kernel updates the contiguous elements ``[start, stop)`` of a parameter's row-major layout
view (SMMF's n x m matricization, SM3's cover, ET's tensor index) given that range's weights and
gradients (flat tensors), its own slice of the sharded state (packed signs counted from the
range's own start, a momentum buffer's range) and the previous, replicated per-axis vectors; the
slice statistics it produces (row and column sums, slice maxima) are *added* into output vectors,
so a rank's partial results can be all-reduced before the optimizer finalizes them. The whole
tensor is the range ``[0, numel)``.

A kernel call takes a table of such ranges, reached through their addresses: one range (a
rank's shard, or a parameter stepped alone), or a group's whole parameters at once
(``smmf_many``, ``sm3_many``, ``et_many``, which also store the new state), so that a model with
hundreds of small tensors makes one call per step rather than one per tensor. The Triton modules
do the same with one launch (:mod:`memplan.kernels.launch` builds their tables).

Technologies, one module per method and technology:

- ``*_cpu``: numba, multi-threaded over cache-sized pieces of the range; the kernels themselves
  are in ``*_numba``, which a ``*_cpu`` module imports on first use (importing it does not import
  numba), and are compiled once and then loaded from numba's cache on disk (see
  :mod:`memplan.kernels.jit`); the layout of a call's tables, which both sides read, is in
  ``*_tables``, which imports nothing (a process compiling a kernel starts without torch);
- ``*_triton``: Triton kernels for CUDA tensors (their tests run on CPU under ``TRITON_INTERPRET=1``).

:mod:`memplan.kernels.select` resolves an optimizer's ``impl`` option to the technology that runs.
"""
