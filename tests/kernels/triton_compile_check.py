"""Compiles every variant of memplan's Triton kernels that the launches use for NVIDIA GPUs
(sm_80 and sm_90, to machine code with Triton's own ptxas), without a GPU, and prints one JSON
object: variant name -> "ok", or the error. Run as a script in a process of its own: once Triton is
imported under TRITON_INTERPRET (as the interpreter tests import it), its own library functions are
interpreted ones and nothing compiles in that process."""

from __future__ import annotations

import json
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from memplan.kernels import sm3_triton, smmf_triton  # noqa: E402

TARGETS = {"sm_90": GPUTarget("cuda", 90, 32), "sm_80": GPUTarget("cuda", 80, 32)}
MANY = {"table": "*i64", "shapes": "*i64", "programs": "*i32", "sums": "*fp32"}


def variants() -> dict[str, tuple]:
    """name -> (kernel, signature of the runtime arguments, constexpr arguments, target name)."""
    found: dict[str, tuple] = {}
    flat, tiled, finalize = smmf_triton._many_kernels()
    for target in TARGETS:
        for sign_mode in (0, 1, 8):
            for dtype, index in ((tl.float32, tl.int32), (tl.float64, tl.int64), (tl.bfloat16, tl.int32)):
                compute = tl.float64 if dtype == tl.float64 else tl.float32
                common = dict(SHAPE_FIELDS=smmf_triton._SHAPE_FIELDS, SIGN_MODE=sign_mode, DTYPE=dtype,
                              COMPUTE=compute, INDEX=index)
                name = f"{sign_mode}-{dtype}-{index}-{target}"
                found[f"smmf_tile-{name}"] = (tiled, MANY, {**common, "TILE_ROWS": smmf_triton.TILE_ROWS,
                                                            "TILE_COLS": smmf_triton.TILE_COLS}, target)
                found[f"smmf_many-{name}"] = (flat, MANY, {**common, "BLOCK": smmf_triton.BLOCK,
                                                           "NEAR_ROWS": smmf_triton.NEAR_ROWS}, target)
            found[f"smmf_finalize-{sign_mode}-{target}"] = (
                finalize, {"table": "*i64", "shapes": "*i64", "sums": "*fp32"},
                dict(SHAPE_FIELDS=smmf_triton._SHAPE_FIELDS, MOMENTS=1 if sign_mode == 0 else 2,
                     BLOCK=smmf_triton.VECTOR_BLOCK), target)
        update, sm3_finalize = sm3_triton._many_kernels()
        fields = dict(FIELDS=sm3_triton._TABLE_FIELDS, COVER_FIELDS=sm3_triton._COVER_FIELDS)
        for axes, with_buffer, dtype, index in ((1, False, tl.float32, tl.int32), (2, True, tl.float32, tl.int32),
                                                (4, True, tl.float64, tl.int64), (3, True, tl.bfloat16, tl.int32),
                                                (sm3_triton.MAX_AXES, False, tl.float16, tl.int32)):
            name = f"{axes}-{with_buffer}-{dtype}-{index}-{target}"
            found[f"sm3_many-{name}"] = (update, {"table": "*i64", "covers": "*i64", "programs": "*i32",
                                                  "maxima": "*fp32"},
                                         {**fields, "AXES": axes, "DTYPE": dtype, "WITH_BUFFER": with_buffer,
                                          "COMPUTE": tl.float64 if dtype == tl.float64 else tl.float32,
                                          "INDEX": index, "TILE_ROWS": sm3_triton.TILE_ROWS,
                                          "TILE_COLS": sm3_triton.TILE_COLS}, target)
            found[f"sm3_finalize-{name}"] = (sm3_finalize, {"table": "*i64", "covers": "*i64", "maxima": "*fp32"},
                                             {**fields, "AXES": axes, "BLOCK": sm3_triton.VECTOR_BLOCK}, target)
    for weights in ("*fp32", "*bf16", "*fp16", "*fp64"):
        factors = "*fp64" if weights == "*fp64" else "*fp32"
        for sign_mode in (0, 1, 8):
            signature = {"weights": weights, "grads": weights, "signs": "*u8" if sign_mode else weights,
                         **{name: factors for name in ("row_v", "col_v", "row_m", "col_m")},
                         **{name: "*fp32" for name in ("new_row_v", "new_col_v", "new_row_m", "new_col_m")},
                         "start": "i64", "length": "i32", "cols": "i32",
                         **{name: "fp32" for name in ("step_size", "eps", "decay", "coupled", "grad_sign")}}
            found[f"smmf_range-{weights}-{sign_mode}-sm_90"] = (
                smmf_triton._kernel(), signature,
                dict(SIGN_MODE=sign_mode, BLOCK=smmf_triton.BLOCK, NEAR_ROWS=smmf_triton.NEAR_ROWS), "sm_90")
            found[f"smmf_range_tile-{weights}-{sign_mode}-sm_90"] = (
                smmf_triton._range_tile_kernel(), {**signature, "first_row": "i32", "band_tiles": "i32"},
                dict(SIGN_MODE=sign_mode, TILE_ROWS=smmf_triton.TILE_ROWS, TILE_COLS=smmf_triton.TILE_COLS), "sm_90")
        for mode in (0, 1, 2):
            signature = {"weights": weights, "grads": weights, "buffer": factors, "accumulators": "*fp32",
                         "maxima": "*fp32", "dims": "*i64", "strides": "*i64", "offsets": "*i64", "start": "i64",
                         "length": "i32", "cols": "i32", "first_row": "i32", "band_tiles": "i32", "head": "i32",
                         **{name: "fp32" for name in ("lr", "eps", "momentum", "dampening", "decay", "coupled",
                                                      "grad_sign")}}
            found[f"sm3_range-{weights}-{mode}-sm_90"] = (
                sm3_triton._kernel(), signature,
                dict(AXES=3, MODE=mode, WITH_BUFFER=mode != 2, TILE_ROWS=sm3_triton.TILE_ROWS,
                     TILE_COLS=sm3_triton.TILE_COLS), "sm_90")
    return found


def compile_variant(kernel, signature: dict[str, str], constants: dict[str, object], target: str) -> str:
    """"ok" when the variant compiles to a cubin, else the error."""
    try:
        signature = {**signature, **{name: "constexpr" for name in constants}}
        compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constants),
                                  target=TARGETS[target])
        return "ok" if compiled.asm.get("cubin") else "no cubin"
    except Exception as error:  # reported per variant
        return f"{type(error).__name__}: {error}"[:2000]


def main() -> None:
    names = sys.argv[1:]
    found = variants()
    print(json.dumps({name: compile_variant(*found[name]) for name in (names or found)}))


if __name__ == "__main__":
    main()
