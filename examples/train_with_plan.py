"""Train examples/model.py with the optimizer a memplan plan describes.

    python examples/train_with_plan.py plan.yaml [--steps 300] [--lr-scale 1.0]

Prints the loss as it falls, then the optimizer state it measured next to the plan's prediction.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model import build_model, synthetic_batch  # noqa: E402

from memplan.measure import state_storage_bytes  # noqa: E402
from memplan.optim import from_plan  # noqa: E402
from memplan.plan import Plan  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("plan", nargs="?", default="plan.yaml")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr-scale", type=float, default=1.0)
    args = parser.parse_args()
    torch.manual_seed(0)
    plan = Plan.load(args.plan)
    model = build_model()
    optimizer = from_plan(model, plan, lr_scale=args.lr_scale)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
    generator = torch.Generator().manual_seed(1)
    losses = []
    for step in range(1, args.steps + 1):
        tokens, labels = synthetic_batch(generator=generator)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(tokens), labels)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step == 1 or step % 50 == 0:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    print(f"mean loss of the first 10 steps {first:.4f}, of the last 10 {last:.4f}")
    print(f"optimizer state: {state_storage_bytes(optimizer):,} bytes measured, {plan.state_bytes:,} planned")


if __name__ == "__main__":
    main()
