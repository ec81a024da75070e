"""The numba intrinsics of the CPU kernels: typed pointers from addresses, and the bits of a float.

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


@numba.extending.intrinsic
def float_bits(typingctx, value):
    """``float_bits(x)``: the bits of a float32 as a uint32 (of a float64 as a uint64). On floats
    from +0.0 up (not -0.0) and NaN, the integers order as the floats do, with a NaN of either sign
    above every number, so the integers' maximum is the floats' (NaN propagating). LLVM vectorizes
    a running maximum of integers and not of floats (a float compare-and-select stays a chain of
    dependent scalar steps)."""
    types = numba.core.types
    if value not in (types.float32, types.float64):
        return None
    target = types.uint32 if value == types.float32 else types.uint64
    return target(value), lambda context, builder, signature, arguments: builder.bitcast(
        arguments[0], context.get_value_type(target))


__all__ = ["array_pointer", "float_bits"]
