"""The numba intrinsic through which the CPU kernels reach tensors by their addresses.

A module-level function, so that the kernels refer to it as a global: see
:mod:`memplan.kernels.jit` for why nothing a cached kernel calls may come from a closure.
"""

from __future__ import annotations

from memplan.kernels.jit import numba_module

numba = numba_module()


@numba.extending.intrinsic
def array_pointer(typingctx, address, dtype):
    """``array_pointer(address, dtype)``: the int64 ``address`` as a typed pointer for
    ``numba.carray``, so that one kernel call reaches many tensors through a table of their
    ``data_ptr()`` (numba takes no list of arrays of different lengths without boxing each one)."""
    target = numba.core.types.CPointer(dtype.dtype)
    return target(address, dtype), lambda context, builder, signature, arguments: builder.inttoptr(
        arguments[0], context.get_value_type(target))


__all__ = ["array_pointer"]
