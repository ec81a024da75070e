"""Run ``memplan bench`` as a user would, time it, and print its results as a Markdown table.

    python benchmarks/bench_table.py gpt2 [--device cpu] [--steps 5] [--calibrate] [other memplan bench options]

With ``--calibrate``, ``memplan bench --calibrate`` runs first (in the working directory, so the
benchmark then predicts with the saved device profile). The wall time is that of the
``memplan bench SOURCE ...`` command alone, start-up included.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from memplan.sizes import format_size


def run(arguments: list[str]) -> tuple[dict, float]:
    """Run ``memplan ARGUMENTS --json``; return its document and its wall time in seconds."""
    began = time.perf_counter()
    done = subprocess.run(["memplan", *arguments, "--json"], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        sys.exit(f"memplan {' '.join(arguments)} failed: {done.stderr.strip()}")
    return json.loads(done.stdout), seconds


def markdown(document: dict) -> str:
    """The results as a Markdown table, predicted beside measured."""
    lines = ["| method | predicted state | measured state | peak transient | predicted ms | measured ms (p10-p90) "
             "| time error | vs AdamW |", "|---|---|---|---|---|---|---|---|"]
    for record in document["results"]:
        if record["skipped"]:
            lines.append(f"| {record['method']} | {format_size(record['predicted_state_bytes'])} | skipped: "
                         f"{record['skip_reason']} | | | | | |")
            continue
        exact = " (exact)" if record["measured_state_bytes"] == record["predicted_state_bytes"] else ""
        predicted_ms = "-" if record["predicted_step_ms"] is None else f"{record['predicted_step_ms']:.1f}"
        error = "-" if record["step_error"] is None else f"{100 * record['step_error']:+.0f}%"
        ratio = "-" if record["ratio_to_adamw"] is None else f"{record['ratio_to_adamw']:.2f}x"
        lines.append(
            f"| {record['method']} | {format_size(record['predicted_state_bytes'])} | "
            f"{format_size(record['measured_state_bytes'])}{exact} | {format_size(record['peak_transient_bytes'])} | "
            f"{predicted_ms} | {record['step_ms_median']:.1f} ({record['step_ms_p10']:.1f}-{record['step_ms_p90']:.1f}) "
            f"| {error} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", default="5")
    parser.add_argument("--calibrate", action="store_true")
    args, extra = parser.parse_known_args()
    if args.calibrate:
        calibrated, seconds = run(["bench", "--calibrate", "--device", args.device])
        profile = calibrated["device_profile"]
        print(f"calibrated in {seconds:.1f} s: memory {profile['memory_bandwidth'] / 1e9:.1f} GB/s, reductions "
              f"{(profile['reduction_bandwidth'] or 0) / 1e9:.1f} GB/s, cache "
              f"{(profile['cache_bandwidth'] or 0) / 1e9:.1f} GB/s, strided norms "
              f"{(profile['strided_norm_bandwidth'] or 0) / 1e9:.2f} GB/s, kernel overhead "
              f"{profile['kernel_overhead'] * 1e6:.2f} us\n")
    document, seconds = run(["bench", args.source, "--device", args.device, "--steps", args.steps, *extra])
    print(f"`memplan bench {args.source} --device {args.device} --steps {args.steps}` on {document['device_name']}, "
          f"torch {document['torch']}, {document['threads']} threads, {document['dtype']}; predictions from "
          f"{document['device_profile_origin']}; wall time {seconds:.1f} s\n")
    print(markdown(document))


if __name__ == "__main__":
    main()
