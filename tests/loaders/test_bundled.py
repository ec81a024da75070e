"""Bundled profiles: all load, match the papers' sizes, and regenerate identically from their sources."""

import shlex

import pytest

from memplan.loaders import bundled_profile_names, load_profile
from memplan.methods import state_bytes

EXPECTED = {"gpt2", "bert-base-uncased", "t5-small", "llama-7b", "transformer-base", "transformer-big",
            "resnet18-cifar", "resnet50", "mobilenet-v2"}

KNOWN_PARAMETER_COUNTS = {
    "gpt2": 124_439_808,
    "llama-7b": 6_738_415_616,
    "t5-small": 60_506_624,
    "resnet50": 25_557_032,          # torchvision.models.resnet50
    "resnet18-cifar": 11_173_962,
    "mobilenet-v2": 3_504_872,       # torchvision.models.mobilenet_v2
}


def test_the_bundled_set():
    assert EXPECTED <= set(bundled_profile_names())


@pytest.mark.parametrize("name", sorted(KNOWN_PARAMETER_COUNTS))
def test_parameter_counts_match_the_reference_implementations(name):
    assert load_profile(name).totals()["numel"] == KNOWN_PARAMETER_COUNTS[name]


def test_resnet50_totals_match_the_smmf_paper():
    profile = load_profile("resnet50")

    def total_mib(spec):
        return sum(state_bytes(spec, p.shape, p.dtype) for p in profile.trainable_params) / 2**20

    assert total_mib("adam") == pytest.approx(195, rel=0.01)
    assert total_mib("sm3") == pytest.approx(98, rel=0.01)          # SM3 with momentum
    assert total_mib("smmf") == pytest.approx(3.5, rel=0.03)        # SMMF, 1-bit signs
    assert total_mib("adafactor:beta1=0.9") == pytest.approx(219, rel=0.01)
    assert total_mib("came") == pytest.approx(341, rel=0.01)


def regenerate_arguments(made_with: str) -> list[str]:
    """The analyze arguments recorded in a profile's made_with, minus output options."""
    words = shlex.split(made_with.split(" (memplan")[0])[2:]
    kept, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word in {"--out", "-o"}:
            skip = True
        elif word != "--json":
            kept.append(word)
    return kept


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_profiles_regenerate_identically_from_their_sources(name, monkeypatch):
    from pathlib import Path

    bundled = load_profile(name)
    arguments = regenerate_arguments(bundled.made_with)
    source, options = arguments[0], arguments[1:]
    if not source.endswith(".py"):
        pytest.importorskip("transformers")
    entry = options[options.index("--entry") + 1] if "--entry" in options else None
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    rebuilt = load_profile(source, entry=entry)
    assert rebuilt.params == bundled.params
    assert rebuilt.fingerprint == bundled.fingerprint
