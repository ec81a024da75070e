"""Train examples/model.py under FSDP2 with the optimizer a per-rank memplan plan describes.

    memplan analyze examples/model.py
    memplan plan --budget 8KiB --world-size 2 --sharding fsdp2 --out .memplan/plan.yaml
    torchrun --nproc-per-node 2 examples/train_fsdp2.py .memplan/plan.yaml

Each rank holds a shard of every parameter (FSDP2's ``fully_shard``) and of its per-element
optimizer state; SMMF, ET and SM3 keep their small factors replicated and reduce their partial
statistics in one collective per step, so training follows the single-device trajectory. Each rank
prints its measured optimizer state next to the plan's prediction for it. gloo on CPU, NCCL on CUDA.
"""

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model import build_model, synthetic_batch  # noqa: E402

from memplan.measure import state_storage_bytes  # noqa: E402
from memplan.optim import from_plan  # noqa: E402
from memplan.plan import Plan  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("plan", nargs="?", default="plan.yaml")
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh(device.type, (world,))
    torch.manual_seed(0)
    plan = Plan.load(args.plan)
    model = build_model().to(device)
    fully_shard(model, mesh=mesh)
    optimizer = from_plan(model, plan)   # refuses a plan made for another world size or sharding
    generator = torch.Generator().manual_seed(1)   # the same batches on every rank keep the demo short
    for step in range(1, args.steps + 1):
        tokens, labels = synthetic_batch(generator=generator)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(tokens.to(device)), labels.to(device))
        loss.backward()
        optimizer.step()
        if rank == 0 and (step == 1 or step % 25 == 0):
            print(f"step {step:4d}  loss {loss.item():.4f}")
    collectives, reduced = optimizer.last_communication()
    print(f"rank {rank}: optimizer state {state_storage_bytes(optimizer):,} bytes measured, "
          f"{plan.rank_state_bytes[rank]:,} planned; {collectives} collective(s) of {reduced:,} bytes per step")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
