"""``memplan bench --world-size N``: every entry measured on N spawned ranks under FSDP2.

The ranks are spawned here (``torch.multiprocessing``; gloo on CPU, NCCL on CUDA, one GPU per
rank). Each materializes the profile's trainable parameters, shards them with ``fully_shard``
(dim 0 over the ranks, as training would), gives them sharded random gradients and, per entry,
measures what :mod:`memplan.bench` measures on one device: the state bytes after the first step
(per rank), the peak transient bytes of one step and the median step time (each rank's, with a
barrier before every timed step so the ranks start together; the collective is inside the step).
The report shows every rank's predicted and measured state bytes and the maximum over ranks.

Predicted step time per rank: the single-device cost model (:func:`memplan.costmodel.predict_seconds`)
on the census of the rank's shard shapes, plus the collective term of
:class:`memplan.costmodel.CollectiveModel`: ``collectives x latency + bus bytes / bandwidth``,
the collectives and bytes predicted from the methods' reduced state
(:meth:`memplan.sharding.Sharding.step_communication`), the latency and bus bandwidth measured
first on the same ranks (all-reduces of 4 bytes and of :data:`PROBE_BYTES`).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

from memplan.costmodel import CollectiveModel
from memplan.errors import MemplanError, UsageError
from memplan.loaders import load_profile
from memplan.methods import BENCH_METHODS, as_spec, param_state
from memplan.plan import Plan
from memplan.profile import ModelProfile
from memplan.sharding import Sharding, StepCommunication, local_shape, row_range

PROBE_BYTES = 4 * 2**20
"""The all-reduce size that measures the collective bandwidth."""


@dataclass(frozen=True)
class RanksResult:
    """One entry on every rank (sizes in exact bytes, times in ms; lists are per rank)."""

    method: str
    predicted_state_bytes: list[int] | None
    measured_state_bytes: list[int] | None
    peak_transient_bytes: list[int] | None
    step_ms_median: list[float] | None
    predicted_step_ms: list[float] | None
    """The cost model on each rank's shard plus the collective term (None without a device profile)."""
    collectives: int | None
    reduced_bytes: int | None
    """Bytes each rank contributes to the step's collective (its packed partial vectors)."""
    predicted_collectives: int | None = None
    predicted_reduced_bytes: int | None = None
    predicted_collective_ms: float | None = None
    """The collective term of the predicted step time."""
    skip_reason: str | None = None

    @property
    def exact(self) -> bool | None:
        """Whether every rank measured exactly its predicted state bytes."""
        if self.measured_state_bytes is None or self.predicted_state_bytes is None:
            return None
        return self.measured_state_bytes == self.predicted_state_bytes

    def to_dict(self) -> dict[str, Any]:
        """The JSON record: every per-rank list, and the maximum over ranks."""
        data = asdict(self)
        for key in ("predicted_state_bytes", "measured_state_bytes", "peak_transient_bytes", "step_ms_median",
                    "predicted_step_ms"):
            data[f"max_{key}"] = None if data[key] is None else max(data[key])
        data["exact"] = self.exact
        return data


@dataclass(frozen=True)
class RanksReport:
    """Every entry's result on the spawned ranks, and what the run was."""

    world_size: int
    backend: str
    profile_name: str
    steps: int
    collective: CollectiveModel
    results: tuple[RanksResult, ...]

    def to_json(self) -> dict[str, Any]:
        """The ``memplan bench --world-size N --json`` document."""
        return {"world_size": self.world_size, "sharding": "fsdp2", "backend": self.backend,
                "profile": self.profile_name, "steps": self.steps,
                "collective": {"latency_s": self.collective.latency,
                               "bus_bandwidth_bytes_per_s": self.collective.bandwidth},
                "results": [result.to_dict() for result in self.results]}


def run_ranks_bench(source: str | Path, world_size: int, specs: Sequence[str] | None = None, device: str = "cpu",
                    plan: str | Path | None = None, steps: int = 5, warmup: int = 1,
                    device_profile: str | Path | None = None) -> RanksReport:
    """Spawn ``world_size`` ranks and measure every method spec (default
    :data:`memplan.methods.BENCH_METHODS`) and ``plan`` under FSDP2."""
    if world_size < 2:
        raise UsageError(f"--world-size must be at least 2 to spawn ranks (got {world_size})")
    if steps < 1 or warmup < 1:
        raise UsageError(f"--steps and --warmup must be at least 1 (got {steps} and {warmup})")
    import torch
    import torch.multiprocessing as multiprocessing

    if device.startswith("cuda") and torch.cuda.device_count() < world_size:
        raise UsageError(f"--world-size {world_size} on cuda needs {world_size} GPUs, found "
                         f"{torch.cuda.device_count()}")
    profile = load_profile(source)
    labels = [str(as_spec(spec)) for spec in (specs or BENCH_METHODS)]
    plan_path = None if plan is None else str(plan)
    if plan_path is not None:
        Plan.load(plan_path).check_model(profile)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as directory:
        out_path = os.path.join(directory, "ranks.json")
        job = _Job(profile.to_dict(), labels, plan_path, device, steps, warmup,
                   None if device_profile is None else str(device_profile), port, out_path)
        try:
            multiprocessing.spawn(_rank_main, args=(world_size, job), nprocs=world_size)
        except multiprocessing.ProcessExitedException:
            # a rank killed by a signal while the ranks tore down their process group, after rank 0
            # wrote every result (gloo on CPU sometimes aborts there): the measurements stand
            if not results_complete(out_path):
                raise
        with open(out_path) as file:
            data = json.load(file)
    results = tuple(RanksResult(**record) for record in data["results"])
    return RanksReport(world_size, data["backend"], profile.name, steps, CollectiveModel(**data["collective"]),
                       results)


def results_complete(path: str) -> bool:
    """Whether the JSON file rank 0 writes once every rank has measured is there, whole."""
    try:
        with open(path) as file:
            json.load(file)
    except (OSError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class _Job:
    """What every rank needs (picklable)."""

    profile: dict[str, Any]
    labels: list[str]
    plan_path: str | None
    device: str
    steps: int
    warmup: int
    device_profile: str | None
    port: int
    out_path: str


def _rank_main(rank: int, world_size: int, job: _Job) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(job.port)
    cuda = job.device.startswith("cuda")
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=300))
    try:
        mesh = init_device_mesh("cuda" if cuda else "cpu", (world_size,))
        profile = ModelProfile.from_dict(job.profile)
        collective = _measure_collective(dist, torch, torch.device("cuda", rank) if cuda else torch.device("cpu"))
        results = [_measure(label, profile, job, mesh, rank, world_size, collective) for label in job.labels]
        if job.plan_path is not None:
            results.append(_measure(f"plan ({job.plan_path})", profile, job, mesh, rank, world_size, collective,
                                    Plan.load(job.plan_path)))
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, results)
        if rank == 0:
            merged = [_merge(per_rank) for per_rank in zip(*gathered)]
            with open(job.out_path, "w") as file:
                json.dump({"backend": backend, "collective": asdict(collective), "results": merged}, file)
        dist.barrier()   # no rank tears its connections down while another still uses them
    finally:
        dist.destroy_process_group()


def _measure_collective(dist: Any, torch: Any, device: Any) -> CollectiveModel:
    """Latency (a 4-byte all-reduce) and bus bandwidth (a :data:`PROBE_BYTES` one, whose bus bytes
    are ``2 (w - 1) / w`` times its size) on these ranks: the slowest rank's times, so that every
    rank predicts with the same model."""

    def median_seconds(elements: int) -> float:
        buffer = torch.zeros(elements, device=device)
        times = []
        for _ in range(7):
            dist.barrier()
            started = time.perf_counter()
            dist.all_reduce(buffer)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        return statistics.median(times[2:])

    times = torch.tensor([median_seconds(1), median_seconds(PROBE_BYTES // 4)], dtype=torch.float64, device=device)
    dist.all_reduce(times, op=dist.ReduceOp.MAX)
    latency, large = times.tolist()
    bus_bytes = StepCommunication(1, PROBE_BYTES).bus_bytes(dist.get_world_size())
    return CollectiveModel(latency, bus_bytes / max(large - latency, 1e-9))


def _measure(label: str, profile: ModelProfile, job: _Job, mesh: Any, rank: int, world_size: int,
             collective: CollectiveModel, plan: Plan | None = None) -> dict[str, Any]:
    """One entry on this rank: predicted and measured figures, or why it was skipped."""
    import torch
    from torch.distributed.fsdp import fully_shard

    from memplan.devices import parse_device
    from memplan.measure import state_storage_bytes

    sharding = Sharding("fsdp2", world_size)
    params = profile.trainable_params
    record: dict[str, Any] = {"method": label}
    try:
        predicted = _predicted_rank_bytes(label, plan, params, sharding)
        communication = sharding.step_communication(_param_states(label, plan, params))
        module = torch.nn.Module()
        generator = torch.Generator().manual_seed(0)
        device = torch.device("cuda", rank) if job.device.startswith("cuda") else torch.device("cpu")
        for index, spec in enumerate(params):
            values = torch.randn(spec.shape, generator=generator, dtype=getattr(torch, spec.dtype)) * 0.02
            module.register_parameter(f"p{index}", torch.nn.Parameter(values.to(device)))
        fully_shard(module, mesh=mesh)
        named = [(spec.name, param) for spec, (_, param) in zip(params, module.named_parameters())]
        for _, param in named:
            param.grad = torch.empty_like(param)
            param.grad.to_local().normal_(0.0, 1e-3, generator=torch.Generator(device).manual_seed(rank))
        if plan is not None:
            from memplan.optim import from_plan

            optimizer = from_plan(named, plan)
        else:
            from memplan.methods import build

            optimizer = build(label, [param for _, param in named], lr=1e-3)
    except MemplanError as error:
        return {**record, "skip_reason": str(error)}
    target = parse_device(job.device if not job.device.startswith("cuda") else f"cuda:{rank}")
    optimizer.step()
    measured = state_storage_bytes(optimizer)
    for _ in range(job.warmup - 1):
        optimizer.step()
    times = []
    for _ in range(job.steps):
        torch.distributed.barrier()
        times.append(target.time_steps(optimizer.step, 1, lambda: None)[0])
    _, peak = target.peak_during(optimizer.step)
    collectives, reduced = getattr(optimizer, "last_communication", lambda: (0, 0))()
    collective_seconds = collective.seconds(communication, world_size)
    compute = _predicted_compute_seconds(label, plan, params, sharding, job, rank)
    return {**record, "predicted_state_bytes": predicted[rank], "measured_state_bytes": measured,
            "peak_transient_bytes": peak, "step_ms_median": statistics.median(times),
            "predicted_step_ms": None if compute is None else 1e3 * (compute + collective_seconds),
            "collectives": collectives, "reduced_bytes": reduced,
            "predicted_collectives": communication.collectives, "predicted_reduced_bytes": communication.packed_bytes,
            "predicted_collective_ms": 1e3 * collective_seconds}


def _param_states(label: str, plan: Plan | None, params: Sequence[Any]) -> list[tuple[Any, Any]]:
    """Shape and state tensors of every parameter: the plan's entries, or ``label`` for all."""
    if plan is not None:
        return [(entry.shape, param_state(entry.method, entry.shape, entry.dtype, entry.layout).tensors)
                for entry in plan.entries]
    return [(param.shape, param_state(label, param.shape, param.dtype).tensors) for param in params]


def _predicted_rank_bytes(label: str, plan: Plan | None, params: Sequence[Any], sharding: Sharding) -> list[int]:
    if plan is not None and plan.sharding is not None and plan.sharding != sharding:
        plan.check_world(sharding.world_size, (sharding.kind,))
    return sharding.rank_state_bytes(_param_states(label, plan, params))


def _predicted_compute_seconds(label: str, plan: Plan | None, params: Sequence[Any], sharding: Sharding, job: _Job,
                               rank: int) -> float | None:
    """This rank's compute: the cost model on its shard shapes, for ``label`` or, with a plan, for
    each of its method specs on the shards of that spec's parameters (each counted as the method
    alone is, in its default layout); None without a device profile."""
    from memplan.census import StepCensus, method_census
    from memplan.costmodel import predict_seconds, resolve_device_profile
    from memplan.devices import parse_device

    chosen, _ = resolve_device_profile(parse_device(job.device), job.device_profile)
    if chosen is None:
        return None
    by_name = {param.name: param for param in params}
    groups = ({spec: [by_name[entry.name] for entry in entries] for spec, entries in plan.method_groups().items()}
              if plan is not None else {label: list(params)})
    try:
        census = StepCensus()
        for spec, members in groups.items():
            shard_shapes = [(local_shape(param.shape, row_range(param.shape[0], sharding.shards, rank)) if param.shape
                             else param.shape, param.dtype) for param in members]
            census += method_census(spec, shard_shapes, chosen.cache_bytes, chosen.kind)
        return predict_seconds(census, chosen).seconds
    except Exception:  # a third-party optimizer that cannot step on the meta device
        return None


def _merge(per_rank: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One entry's records from every rank as one :class:`RanksResult` record."""
    first = per_rank[0]
    skipped = next((record["skip_reason"] for record in per_rank if "skip_reason" in record), None)
    if skipped is not None:
        return {"method": first["method"], "predicted_state_bytes": None, "measured_state_bytes": None,
                "peak_transient_bytes": None, "step_ms_median": None, "predicted_step_ms": None,
                "collectives": None, "reduced_bytes": None, "skip_reason": skipped}
    predicted_ms = [record["predicted_step_ms"] for record in per_rank]
    return {"method": first["method"],
            **{key: [record[key] for record in per_rank] for key in ("predicted_state_bytes", "measured_state_bytes",
                                                                     "peak_transient_bytes", "step_ms_median")},
            "predicted_step_ms": None if None in predicted_ms else predicted_ms,
            **{key: first[key] for key in ("collectives", "reduced_bytes", "predicted_collectives",
                                           "predicted_reduced_bytes", "predicted_collective_ms")},
            "skip_reason": None}


__all__ = ["CollectiveModel", "RanksReport", "RanksResult", "run_ranks_bench"]
