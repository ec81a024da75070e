"""Where the time of SMMF's one-pass CPU loop goes: the row loop of
``memplan/kernels/smmf_numba.py`` (bool signs, fp32 column sums) stand-alone, and variants of it,
over a matrix that stays in the caches and over one read from memory. With ``--threads 2`` each of
two threads walks half the rows (``nogil`` loops on Python threads, as the kernel runs them).

    python benchmarks/smmf_loop.py [--cols 768] [--rounds 7] [--threads 1] [--variants WORDS]

Variants: ``w += step * g`` over the same elements (the floor: 8 bytes read, 4 written); the loop
as the kernel has it; the same without its weight-decay and gradient-sign terms, which every
variant below also leaves out; without the square root and division (what they cost); without the
column sums (what adding into the two column vectors costs), or with those vectors only read or only
written; walked in tiles of 16 rows by 1,024 columns (the column vectors stay in L1, but 16 rows
stream at once); two rows per pass (each column's factors and sums read and written once for both
rows), adjacent or from the matrix's two halves (twice the streams read at once); four rows per
pass from its four quarters; the update first and the sums in a second loop over an L1 scratch of S
and |F|, 512 elements at a time. Each variant runs in turn, in interleaved rounds; the table gives
the median ns per element and the spread. ``--variants two,four`` runs only the variants whose names
hold one of the words.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from memplan.kernels.jit import numba_module

numba = numba_module()
LOOP = dict(nogil=True, fastmath={"reassoc"}, error_model="numpy")


def make_row(without: str = "", terms: bool = False):
    """The kernel's row loop without its weight decay and gradient sign (``terms`` keeps them, as
    the kernel has them: decay 1, coupled decay 0 and sign 1, read at run time), leaving out
    ``"root"`` (square root and division) or ``"columns"`` (the column sums), or touching the
    column sums with ``"loads"`` (read into the row sums) or ``"stores"`` (overwritten) alone."""

    @numba.njit(**LOOP)
    def row(weights, grads, flags, col_v, col_m, rv, rm, step_size, eps, sums_v, sums_m, decay, coupled, grad_sign):
        sum_v = np.float32(0)
        sum_m = np.float32(0)
        for i in range(weights.shape[0]):
            weight = weights[i]
            gradient = grads[i] * grad_sign + coupled * weight if terms else grads[i]
            second = gradient * gradient + rv * col_v[i]
            moment = gradient + (rm if flags[i] else -rm) * col_m[i]
            flags[i] = moment > 0
            magnitude = abs(moment)
            kept = weight * decay if terms else weight
            if without == "root":
                weights[i] = kept + step_size * (moment * second)
            else:
                weights[i] = kept + step_size * (moment / (np.sqrt(second) + eps))
            sum_v += second
            sum_m += magnitude
            if without == "loads":
                sum_v += sums_v[i]
                sum_m += sums_m[i]
            elif without == "stores":
                sums_v[i] = second
                sums_m[i] = magnitude
            elif without != "columns":
                sums_v[i] += second
                sums_m[i] += magnitude
        return sum_v, sum_m

    return row


@numba.njit(**LOOP)
def two_rows(w0, g0, f0, w1, g1, f1, col_v, col_m, rv0, rm0, rv1, rm1, step_size, eps, sums_v, sums_m):
    """The row loop over two rows at once: each column's factors and sums touched once."""
    a_v = np.float32(0)
    a_m = np.float32(0)
    b_v = np.float32(0)
    b_m = np.float32(0)
    for i in range(w0.shape[0]):
        cv = col_v[i]
        cm = col_m[i]
        gradient = g0[i]
        second = gradient * gradient + rv0 * cv
        moment = gradient + (rm0 if f0[i] else -rm0) * cm
        f0[i] = moment > 0
        magnitude = abs(moment)
        w0[i] = w0[i] + step_size * (moment / (np.sqrt(second) + eps))
        gradient1 = g1[i]
        second1 = gradient1 * gradient1 + rv1 * cv
        moment1 = gradient1 + (rm1 if f1[i] else -rm1) * cm
        f1[i] = moment1 > 0
        magnitude1 = abs(moment1)
        w1[i] = w1[i] + step_size * (moment1 / (np.sqrt(second1) + eps))
        a_v += second
        a_m += magnitude
        b_v += second1
        b_m += magnitude1
        sums_v[i] += second + second1
        sums_m[i] += magnitude + magnitude1
    return a_v + b_v, a_m + b_m


@numba.njit(**LOOP)
def four_rows(w0, g0, f0, w1, g1, f1, w2, g2, f2, w3, g3, f3, col_v, col_m, rv, rm, step_size, eps, sums_v, sums_m):
    """The row loop over four rows at once (the same row factors, as the variants' rows have):
    each column's factors and sums touched once for all four."""
    total_v = np.float32(0)
    total_m = np.float32(0)
    for i in range(w0.shape[0]):
        cv = col_v[i]
        cm = col_m[i]
        g = g0[i]
        s0 = g * g + rv * cv
        m0 = g + (rm if f0[i] else -rm) * cm
        f0[i] = m0 > 0
        w0[i] = w0[i] + step_size * (m0 / (np.sqrt(s0) + eps))
        g = g1[i]
        s1 = g * g + rv * cv
        m1 = g + (rm if f1[i] else -rm) * cm
        f1[i] = m1 > 0
        w1[i] = w1[i] + step_size * (m1 / (np.sqrt(s1) + eps))
        g = g2[i]
        s2 = g * g + rv * cv
        m2 = g + (rm if f2[i] else -rm) * cm
        f2[i] = m2 > 0
        w2[i] = w2[i] + step_size * (m2 / (np.sqrt(s2) + eps))
        g = g3[i]
        s3 = g * g + rv * cv
        m3 = g + (rm if f3[i] else -rm) * cm
        f3[i] = m3 > 0
        w3[i] = w3[i] + step_size * (m3 / (np.sqrt(s3) + eps))
        second = (s0 + s1) + (s2 + s3)
        magnitude = (abs(m0) + abs(m1)) + (abs(m2) + abs(m3))
        total_v += second
        total_m += magnitude
        sums_v[i] += second
        sums_m[i] += magnitude
    return total_v, total_m


def make_walk(row, tile_rows: int = 1, tile_cols: int = 0):
    """A whole matrix through ``row``: row after row, or in tiles of ``tile_rows`` x ``tile_cols``."""

    @numba.njit(nogil=True, error_model="numpy")
    def walk(w, g, f, col_v, col_m, rows, cols, sums_v, sums_m, terms):
        total = 0.0
        width = tile_cols if tile_cols else cols
        for r0 in range(0, rows, tile_rows):
            for c0 in range(0, cols, width):
                c1 = min(cols, c0 + width)
                for r in range(r0, min(rows, r0 + tile_rows)):
                    a, b = row(w[r * cols + c0:r * cols + c1], g[r * cols + c0:r * cols + c1],
                               f[r * cols + c0:r * cols + c1], col_v[c0:c1], col_m[c0:c1], np.float32(0.3),
                               np.float32(0.2), np.float32(-1e-3), np.float32(1e-8), sums_v[c0:c1], sums_m[c0:c1],
                               terms[0], terms[1], terms[2])
                    total += a + b
        return total

    return walk


@numba.njit(nogil=True, error_model="numpy")
def walk_pairs(w, g, f, col_v, col_m, rows, cols, sums_v, sums_m, terms):
    """A whole matrix, two rows per pass (``rows`` even)."""
    total = 0.0
    for r in range(0, rows, 2):
        q = r + 1
        a, b = two_rows(w[r * cols:q * cols], g[r * cols:q * cols], f[r * cols:q * cols], w[q * cols:(q + 1) * cols],
                        g[q * cols:(q + 1) * cols], f[q * cols:(q + 1) * cols], col_v, col_m, np.float32(0.3),
                        np.float32(0.2), np.float32(0.3), np.float32(0.2), np.float32(-1e-3), np.float32(1e-8),
                        sums_v, sums_m)
        total += a + b
    return total


@numba.njit(nogil=True, error_model="numpy")
def walk_far_pairs(w, g, f, col_v, col_m, rows, cols, sums_v, sums_m, terms):
    """A whole matrix, two rows per pass taken from its two halves (``rows`` even): twice the
    streams that one row's walk reads at once."""
    total = 0.0
    half = rows // 2
    for r in range(half):
        q = r + half
        a, b = two_rows(w[r * cols:(r + 1) * cols], g[r * cols:(r + 1) * cols], f[r * cols:(r + 1) * cols],
                        w[q * cols:(q + 1) * cols], g[q * cols:(q + 1) * cols], f[q * cols:(q + 1) * cols], col_v,
                        col_m, np.float32(0.3), np.float32(0.2), np.float32(0.3), np.float32(0.2), np.float32(-1e-3),
                        np.float32(1e-8), sums_v, sums_m)
        total += a + b
    return total


@numba.njit(nogil=True, error_model="numpy")
def walk_far_quads(w, g, f, col_v, col_m, rows, cols, sums_v, sums_m, terms):
    """A whole matrix, four rows per pass taken from its four quarters (``rows`` a multiple of 4)."""
    total = 0.0
    quarter = rows // 4
    for r in range(quarter):
        a, b, c, d = r * cols, (r + quarter) * cols, (r + 2 * quarter) * cols, (r + 3 * quarter) * cols
        x, y = four_rows(w[a:a + cols], g[a:a + cols], f[a:a + cols], w[b:b + cols], g[b:b + cols], f[b:b + cols],
                         w[c:c + cols], g[c:c + cols], f[c:c + cols], w[d:d + cols], g[d:d + cols], f[d:d + cols],
                         col_v, col_m, np.float32(0.3), np.float32(0.2), np.float32(-1e-3), np.float32(1e-8),
                         sums_v, sums_m)
        total += x + y
    return total


SCRATCH = 512


@numba.njit(**LOOP)
def update_part(weights, grads, flags, col_v, col_m, rv, rm, step_size, eps, seconds, magnitudes):
    """The update alone, leaving each element's S and |F| in scratch."""
    for i in range(weights.shape[0]):
        gradient = grads[i]
        second = gradient * gradient + rv * col_v[i]
        moment = gradient + (rm if flags[i] else -rm) * col_m[i]
        flags[i] = moment > 0
        magnitudes[i] = abs(moment)
        seconds[i] = second
        weights[i] = weights[i] + step_size * (moment / (np.sqrt(second) + eps))


@numba.njit(**LOOP)
def sums_part(seconds, magnitudes, sums_v, sums_m):
    """The row and column sums of the scratch."""
    sum_v = np.float32(0)
    sum_m = np.float32(0)
    for i in range(seconds.shape[0]):
        sum_v += seconds[i]
        sum_m += magnitudes[i]
        sums_v[i] += seconds[i]
        sums_m[i] += magnitudes[i]
    return sum_v, sum_m


@numba.njit(nogil=True, error_model="numpy")
def walk_split(w, g, f, col_v, col_m, rows, cols, sums_v, sums_m, terms):
    """A whole matrix, each row in pieces of SCRATCH elements: the update, then the sums over
    its scratch (which stays in L1)."""
    seconds = np.empty(SCRATCH, np.float32)
    magnitudes = np.empty(SCRATCH, np.float32)
    total = 0.0
    for r in range(rows):
        for low in range(0, cols, SCRATCH):
            high = min(cols, low + SCRATCH)
            at, to = r * cols + low, r * cols + high
            update_part(w[at:to], g[at:to], f[at:to], col_v[low:high], col_m[low:high], np.float32(0.3),
                        np.float32(0.2), np.float32(-1e-3), np.float32(1e-8), seconds[:high - low],
                        magnitudes[:high - low])
            a, b = sums_part(seconds[:high - low], magnitudes[:high - low], sums_v[low:high], sums_m[low:high])
            total += a + b
    return total


@numba.njit(**LOOP)
def stream(w, g, f, col_v, col_m, rows, cols, sums_v, sums_m, terms):
    """The floor: ``w += step * g`` over the same elements (8 bytes read and 4 written each)."""
    for i in range(w.shape[0]):
        w[i] = w[i] + np.float32(-1e-3) * g[i]
    return 0.0


VARIANTS = {
    "w += step * g (the floor)": stream,
    "the kernel's loop": make_walk(make_row(terms=True)),
    "without weight decay and gradient sign": make_walk(make_row()),
    "without sqrt and division": make_walk(make_row("root")),
    "without column sums": make_walk(make_row("columns")),
    "column vectors read, not written": make_walk(make_row("loads")),
    "column vectors written, not read": make_walk(make_row("stores")),
    "tiles of 16 x 1024": make_walk(make_row(), 16, 1024),
    "two rows per pass": walk_pairs,
    "two rows per pass, from the two halves": walk_far_pairs,
    "four rows per pass, from the four quarters": walk_far_quads,
    "sums in a second loop over scratch": walk_split,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cols", type=int, default=768)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", default="", help="comma-separated words; run the variants whose names hold one")
    args = parser.parse_args()
    chosen = [word.strip() for word in args.variants.split(",") if word.strip()]
    variants = {name: walk for name, walk in VARIANTS.items() if not chosen or any(word in name for word in chosen)}
    pool = ThreadPoolExecutor(args.threads)
    generator = np.random.default_rng(0)
    cols = args.cols
    col_v = generator.random(cols, dtype=np.float32)
    col_m = generator.random(cols, dtype=np.float32)
    terms = np.array([1.0, 0.0, 1.0], np.float32)   # decay, coupled decay, gradient sign
    print(f"{args.threads} thread(s), {cols} columns; ns per element, median of {args.rounds} interleaved rounds "
          "(min-max)\n")
    print("| variant | in the caches (~100 K elements) | from memory (~19 M elements) |")
    print("|---|---|---|")
    cells: dict[str, list[str]] = {name: [] for name in variants}
    for target in (98_304, 18_874_368):
        rows = max(4 * args.threads, target // cols // (4 * args.threads) * 4 * args.threads)
        share = rows // args.threads
        count = rows * cols
        repeats = max(1, 20_000_000 // count)
        w = generator.standard_normal(count, dtype=np.float32)
        g = generator.standard_normal(count, dtype=np.float32)
        f = (generator.random(count) > 0.5).astype(np.uint8)
        sums = [(np.zeros(cols, np.float32), np.zeros(cols, np.float32)) for _ in range(args.threads)]

        def run(walk, thread: int, repeats: int = 1) -> None:
            part = slice(thread * share * cols, (thread + 1) * share * cols)
            for _ in range(repeats):
                walk(w[part], g[part], f[part], col_v, col_m, share, cols, *sums[thread], terms)

        for walk in variants.values():
            run(walk, 0)  # compile
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, walk in variants.items():
                start = time.perf_counter()
                list(pool.map(run, [walk] * args.threads, range(args.threads), [repeats] * args.threads))
                times[name].append((time.perf_counter() - start) / repeats / count * 1e9)
        for name, values in times.items():
            cells[name].append(f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})")
    for name, row in cells.items():
        print(f"| {name} | {row[0]} | {row[1]} |")


if __name__ == "__main__":
    main()
