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
