import pytest

from memplan.errors import SourceError, UsageError
from memplan.loaders import freeze_matching, load_profile, source_kind


def test_source_kinds(tmp_path):
    for name, kind in [("m.py", "python"), ("c.pt", "checkpoint"), ("c.PTH", "checkpoint"), ("c.bin", "checkpoint"),
                       ("m.safetensors", "safetensors"), ("model.safetensors.index.json", "sharded"),
                       ("p.yaml", "profile"), ("p.yml", "profile"), ("config.json", "hf")]:
        (tmp_path / name).write_text("")
        assert source_kind(tmp_path / name) == kind
    assert source_kind("gpt2") == "bundled"


@pytest.mark.parametrize("source, message", [
    ("no-such-model", r"no such file or bundled profile \(bundled: .*gpt2"),
    ("missing/model.py", "no such file or folder"),
])
def test_unknown_sources(source, message):
    with pytest.raises(SourceError, match=message):
        source_kind(source)


def test_unknown_suffix_and_empty_folder(tmp_path):
    (tmp_path / "weights.npz").write_text("")
    with pytest.raises(SourceError, match="unknown kind of source"):
        source_kind(tmp_path / "weights.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="holds no config.json"):
        source_kind(tmp_path / "empty")


def test_options_that_do_not_apply_are_refused():
    with pytest.raises(UsageError, match="--entry applies to a model.py"):
        load_profile("gpt2", entry="x")
    with pytest.raises(UsageError, match="--strip-prefix applies"):
        load_profile("gpt2", strip_prefix="module.")


def test_freeze_marks_matching_parameters_and_aliases():
    profile = freeze_matching(load_profile("gpt2"), r"^transformer\.h\.\d+\.attn")
    frozen = [p.name for p in profile.params if not p.trainable]
    assert len(frozen) == 12 * 4 and all(".attn." in name for name in frozen)
    assert not freeze_matching(load_profile("gpt2"), "lm_head")["transformer.wte.weight"].trainable
    with pytest.raises(UsageError, match="not a valid regular expression"):
        freeze_matching(profile, "(")
