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
