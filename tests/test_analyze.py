from memplan.analyze import analyze, parameter_record
from memplan.loaders import load_profile
from memplan.methods import ANALYZE_METHODS, state_bytes
from memplan.profile import ModelProfile, ParamSpec


def test_totals_are_sums_of_per_parameter_bytes_over_trainable_parameters():
    profile = ModelProfile("m", "s", (ParamSpec("w", (30, 20)), ParamSpec("b", (20,), kind="bias"),
                                      ParamSpec("frozen", (1000, 1000), trainable=False)))
    result = analyze(profile, ["adam", "smmf:sign_bits=8", "et2"])
    totals = {t.spec: t.state_bytes for t in result.totals}
    for spec in ("adam", "smmf:sign_bits=8", "et2"):
        assert totals[spec] == state_bytes(spec, (30, 20)) + state_bytes(spec, (20,))
    assert [t.ratio_to_adam for t in result.totals][0] == 1.0


def test_default_methods_and_json_schema():
    result = analyze(load_profile("gpt2"))
    assert [t.spec for t in result.totals] == list(ANALYZE_METHODS)
    document = result.to_json("gpt2")
    assert set(document) == {"source", "fingerprint", "parameters", "totals", "methods"}
    assert document["totals"]["numel"] == 124_439_808
    assert set(document["parameters"][0]) == {"name", "shape", "numel", "dtype", "kind", "trainable"}
    assert all(isinstance(v["state_bytes"], int) for v in document["methods"].values())


def test_specs_are_canonical_and_deduplicated():
    result = analyze(load_profile("resnet18-cifar"), ["sm3:momentum=0.0", "sm3:momentum=0", "adam"])
    assert [t.spec for t in result.totals] == ["sm3:momentum=0", "adam"]


def test_nothing_trainable_has_no_ratio():
    profile = ModelProfile("m", "s", (ParamSpec("w", (3,), trainable=False),))
    assert analyze(profile, ["adam"]).totals[0].ratio_to_adam is None


def test_parameter_record_layout_columns():
    record = parameter_record(ParamSpec("emb", (30522, 768), kind="embedding"))
    assert (record["smmf"], record["et1"], record["shape"]) == ("5087x4608", "30522x768", "30522x768")
    assert parameter_record(ParamSpec("s", ()))["shape"] == "scalar"
