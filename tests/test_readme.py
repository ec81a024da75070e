"""The README stays true: its method table is the registry's, and its set-up commands are the CI's."""

from pathlib import Path

from memplan.methods import defaults_table

REPO = Path(__file__).resolve().parents[1]


def test_readme_method_table_matches_the_registry():
    assert defaults_table() in (REPO / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "```bash\npython -m pytest\n```" in readme
    assert ci.rstrip().endswith("python -m pytest")
    assert "torch==2.13.0" in ci and "pip install torch==2.13.0" in readme


def test_readme_points_to_docs_in_the_repository():
    readme = (REPO / "README.md").read_text()
    for doc in ("docs/methods.md", "docs/evidence.md"):
        assert f"]({doc})" in readme and (REPO / doc).is_file()
    before_optimizers = readme.split("## Optimizers")[0]
    assert "shared/" not in before_optimizers
    assert "step` counters" in readme and "1 MiB = 2^20 bytes" in readme


def test_the_setup_command_leaves_no_untracked_file(run_memplan, tmp_path):
    import subprocess

    setup = next(line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("pip install"))
    planning = setup.split("&& ", 1)[1].split()
    assert planning[0] == "memplan"
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / ".gitignore").write_text((REPO / ".gitignore").read_text())
    assert run_memplan(*planning[1:]).code == 0
    status = subprocess.run(["git", "status", "--porcelain"], cwd=tmp_path, capture_output=True, text=True)
    assert status.stdout.strip() == "?? .gitignore"
    # the README's next bench runs on another model without tripping over that plan
    assert run_memplan("bench", "resnet18-cifar", "--methods", "sgd", "--steps", "1").code == 0


# --- Following the README top to bottom -------------------------------------------------------
#
# Every `memplan ...` command of the README's ```bash blocks runs, in order, in one fresh working
# folder, and exits 0. The files the README names (model.py, ckpt.pt, model.safetensors, ...)
# are made tiny there first. A new README command runs by default; one that cannot run here is
# listed below with the reason, and one that is made smaller says how. The commands run through
# the console script's own entry point in this process (the run_memplan fixture): importing torch
# once rather than twenty times keeps the walk-through within seconds.

NOT_RUN = {
    "memplan bench --calibrate": "times 256 MiB kernels for about 20 s (tests/cli/test_bench_cmd.py runs it)",
    "memplan bench llama-7b --memory 64GiB": "materializes LLaMA-7B's 27 GB of fp32 parameters on this machine",
    "memplan bench gpt2 --device cuda:0 --json": "needs a GPU",
}
"""README commands not run, with the reason."""

SMALLER_BENCH_MODEL = {"gpt2": "model.py", "resnet50": "model.py"}
"""``bench`` measures real steps of every method: here on the README's tiny model.py (36 k
parameters), for one timed step, rather than on GPT-2 or ResNet-50."""

SMALLER_TRIAL_MODEL = {"benchmarks/workloads/char_lm.py": "model.py"}
"""``trial`` trains: here the README's model.py for 30 steps of smmf beside Adam and SGD."""

NEEDS_TRANSFORMERS = {"memplan analyze path/to/hf-folder"}


def readme_commands() -> list[list[str]]:
    """The ``memplan`` commands of the README's bash blocks, in order, as argument lists."""
    import re
    import shlex

    commands = []
    for block in re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            while words:
                segment = words[:words.index("&&")] if "&&" in words else words
                words = words[len(segment) + 1:]
                if segment and segment[0] == "memplan":
                    commands.append(segment)
    return commands


def _tiny_safetensors(path: Path, tensors: dict[str, tuple[int, ...]]) -> None:
    """A float32 safetensors file of zeros (the format: header length, JSON header, data)."""
    import json
    import math
    import struct

    header, offset = {}, 0
    for name, shape in tensors.items():
        size = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + bytes(offset))


def _newcomer_folder(folder: Path) -> None:
    """The files the README's commands name, tiny."""
    import json
    import shutil

    import torch

    shutil.copytree(REPO / "examples", folder / "examples")
    example = (REPO / "examples" / "model.py").read_text()
    (folder / "model.py").write_text(example + "\n\ndef make_model() -> TinyClassifier:\n    return TinyClassifier()\n")
    torch.save({"module.fc.weight": torch.zeros(4, 8), "module.fc.bias": torch.zeros(4)}, folder / "ckpt.pt")
    _tiny_safetensors(folder / "model.safetensors", {"fc.weight": (4, 8), "fc.bias": (4,)})
    _tiny_safetensors(folder / "shards" / "model-00001-of-00001.safetensors", {"fc.weight": (4, 8)})
    (folder / "shards" / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"fc.weight": "model-00001-of-00001.safetensors"}}))
    hf = folder / "path" / "to" / "hf-folder"
    hf.mkdir(parents=True)
    (hf / "config.json").write_text(json.dumps({
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 2,
        "vocab_size": 32, "n_positions": 16}))


def test_the_readme_lists_what_it_does_not_run():
    commands = {" ".join(command) for command in readme_commands()}
    assert set(NOT_RUN) <= commands and NEEDS_TRANSFORMERS <= commands
    assert any(command[:2] == ["memplan", "bench"] for command in readme_commands())


def test_a_newcomer_can_run_every_readme_command_in_order(run_memplan, tmp_path):
    import importlib.util

    _newcomer_folder(tmp_path)
    has_transformers = importlib.util.find_spec("transformers") is not None
    ran = 0
    for command in readme_commands():
        line = " ".join(command)
        if line in NOT_RUN or (line in NEEDS_TRANSFORMERS and not has_transformers):
            continue
        args, stdout_file = command[1:], None
        if ">" in args:
            args, stdout_file = args[:args.index(">")], args[args.index(">") + 1]
        if args[0] == "trial":
            # a few steps of two methods on the README's model.py, rather than a full trial (enough
            # for Adam to beat SGD there: a trial where it does not writes no priors file)
            args = [SMALLER_TRIAL_MODEL.get(arg, arg) for arg in args]
            for option, value in (("--steps", "30"), ("--methods", "smmf"), ("--probes", "1"), ("--seeds", "1")):
                if option in args:
                    args[args.index(option) + 1] = value
                else:
                    args += [option, value]
        if args[0] == "bench":
            args = [SMALLER_BENCH_MODEL.get(arg, arg) for arg in args]
            if "--steps" in args:
                args[args.index("--steps") + 1] = "1"
            else:
                args += ["--steps", "1"]
        result = run_memplan(*args)
        assert result.code == 0, f"{line}\n{result.stderr}"
        if stdout_file:
            (tmp_path / stdout_file).write_text(result.stdout)
        ran += 1
    assert ran >= len(readme_commands()) - len(NOT_RUN) - len(NEEDS_TRANSFORMERS)
    assert (tmp_path / "params.csv").read_text().startswith("name,")
