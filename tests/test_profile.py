import pytest
import yaml
from hypothesis import given, settings, strategies as st

from memplan.errors import ProfileError
from memplan.profile import PARAM_KINDS, ModelProfile, ParamSpec, fingerprint_of

names = st.text(alphabet="abcdefghij._0123456789", min_size=1, max_size=20)
shapes = st.lists(st.integers(min_value=0, max_value=4096), min_size=0, max_size=4).map(tuple)
dtypes = st.sampled_from(["float32", "bfloat16", "float16", "float64"])


@st.composite
def profiles(draw):
    labels = draw(st.lists(names, min_size=0, max_size=12, unique=True))
    params, used = [], set()
    for label in labels:
        if label in used:
            continue
        used.add(label)
        alias_pool = [f"{label}.alias{i}" for i in range(draw(st.integers(0, 2)))]
        used.update(alias_pool)
        params.append(ParamSpec(label, draw(shapes), draw(dtypes), draw(st.sampled_from(PARAM_KINDS)),
                                draw(st.booleans()), tuple(alias_pool)))
    return ModelProfile(name=draw(names), source=draw(names), params=tuple(params), made_with=draw(st.text(max_size=30)))


@settings(max_examples=60, deadline=None)
@given(profiles())
def test_yaml_round_trip_is_identical_both_ways(profile):
    text = profile.to_yaml()
    again = ModelProfile.from_yaml(text)
    assert again == profile
    assert again.to_yaml() == text
    assert again.fingerprint == profile.fingerprint


def test_numel_bytes_and_totals():
    spec = ParamSpec("w", (3, 4), "bfloat16", "linear")
    assert (spec.numel, spec.nbytes) == (12, 24)
    scalar = ParamSpec("s", (), "float32")
    assert (scalar.numel, scalar.nbytes) == (1, 4)
    frozen = ParamSpec("f", (10,), "float32", "bias", trainable=False)
    profile = ModelProfile("m", "src", (spec, scalar, frozen))
    assert profile.totals() == {"parameters": 3, "numel": 23, "param_bytes": 68,
                                "trainable_parameters": 2, "trainable_numel": 13}
    assert [p.name for p in profile.trainable_params] == ["w", "s"]


def test_fingerprint_depends_on_names_shapes_dtypes_only():
    a = ModelProfile("a", "x", (ParamSpec("w", (3, 4)), ParamSpec("b", (4,), kind="bias")))
    reordered = ModelProfile("other", "y", (ParamSpec("b", (4,)), ParamSpec("w", (3, 4), trainable=False)))
    assert a.fingerprint == reordered.fingerprint
    assert a.fingerprint != ModelProfile("a", "x", (ParamSpec("w", (4, 3)), ParamSpec("b", (4,)))).fingerprint
    assert a.fingerprint != ModelProfile("a", "x", (ParamSpec("w", (3, 4), "float16"), ParamSpec("b", (4,)))).fingerprint
    assert a.fingerprint == fingerprint_of([("w", (3, 4), "float32"), ("b", (4,), "float32")])


def test_dtype_spellings_are_canonical():
    assert ParamSpec("w", (1,), "torch.bfloat16").dtype == "bfloat16"
    assert ParamSpec("w", (1,), "BF16").dtype == "bfloat16"
    assert ParamSpec("w", (1,), "fp32").dtype == "float32"


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["parameters"][0].update(numel=7), "numel is 7"),
    (lambda d: d["parameters"][0].update(shape=[3, -1]), r"parameters\[0\].shape\[1\]: expected an integer >= 0"),
    (lambda d: d["parameters"][0].update(kind="weird"), r"parameters\[0\].kind: expected one of embedding, .*'weird'"),
    (lambda d: d["parameters"][0].update(dtype="float3"), "parameter w: unknown dtype"),
    (lambda d: d["parameters"][0].update(colour="red"), r"parameters\[0\].colour: unknown key \(valid: aliases, "),
    (lambda d: d["parameters"].append(dict(d["parameters"][0])), "appears twice"),
    (lambda d: d.update(fingerprint="sha256:0000000000000000"), "fingerprint"),
    (lambda d: d.update(memplan_profile=99), "format 99"),
    (lambda d: d.pop("parameters"), "parameters: missing, expected a list of mappings"),
    (lambda d: d.update(source=None), "source: expected a string, got null"),
])
def test_inconsistent_documents_are_refused_naming_the_problem(mutate, message):
    data = ModelProfile("m", "s", (ParamSpec("w", (3, 4)),)).to_dict()
    data.pop("totals")
    mutate(data)
    with pytest.raises(ProfileError, match=message):
        ModelProfile.from_yaml(yaml.safe_dump(data))


def test_a_mistyped_value_in_a_hand_edited_profile_is_one_clear_error():
    data = ModelProfile("m", "s", (ParamSpec("w", (3, 4)), ParamSpec("b", (4,), kind="bias"))).to_dict()
    data["parameters"][1]["trainable"] = "no"
    with pytest.raises(ProfileError) as error:
        ModelProfile.from_yaml(yaml.safe_dump(data, sort_keys=False))
    assert str(error.value) == "profile: parameters[1].trainable: expected true or false, got 'no'"
    data["parameters"][0]["shape"] = "3x4"
    data["totals"] = None
    with pytest.raises(ProfileError) as error:
        ModelProfile.from_yaml(yaml.safe_dump(data, sort_keys=False))
    assert str(error.value) == ("profile: 3 problems: totals: expected a mapping, got null; parameters[0].shape: "
                                "expected a list of integers >= 0, got '3x4'; parameters[1].trainable: expected "
                                "true or false, got 'no'")


def test_hand_edited_shape_is_accepted_once_derived_fields_are_removed():
    data = ModelProfile("m", "s", (ParamSpec("w", (3, 4)),)).to_dict()
    for key in ("fingerprint", "totals"):
        data.pop(key)
    data["parameters"][0] = {"name": "w", "shape": [5, 4]}
    assert ModelProfile.from_dict(data)["w"].shape == (5, 4)


def test_lookup_by_alias_and_save_load(tmp_path):
    profile = ModelProfile("m", "s", (ParamSpec("emb", (10, 4), aliases=("head",)),))
    assert profile["head"].name == "emb" and "head" in profile
    path = profile.save(tmp_path / "sub" / "p.yaml")
    assert ModelProfile.load(path) == profile
    with pytest.raises(ProfileError, match="cannot read"):
        ModelProfile.load(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(ProfileError, match="not valid YAML"):
        ModelProfile.load(tmp_path / "bad.yaml")
