"""memplan.schema: every kind of problem, named by its path, and many problems in one error."""

import pytest

from memplan.errors import PlanError
from memplan.schema import (
    Anything, Either, Fields, Flag, Integer, ListOf, MapOf, Nullable, Number, OneOf, Text, check,
    describe_problems, find_problems,
)

ENTRY = Fields(required={"name": Text(), "shape": ListOf(Integer(at_least=0))},
               optional={"quality": Number(), "distortion": Nullable(Number()), "trainable": Flag()})
DOCUMENT = Fields(
    required={"model": Fields(required={"name": Text(), "fingerprint": Text()}, optional={"source": Text()}),
              "parameters": ListOf(ENTRY)},
    optional={"kind": OneOf("cpu", "cuda"), "hyperparameters": MapOf(MapOf(Anything())),
              "bandwidth": Number(above=0), "overhead": Number(at_least=0), "note": Anything()},
)


def valid_document():
    return {"model": {"name": "m", "fingerprint": "sha256:0"},
            "parameters": [{"name": "w", "shape": [3, 4], "quality": 1, "distortion": None, "trainable": True}],
            "kind": "cuda", "hyperparameters": {"smmf": {"eps": 1e-8}}, "bandwidth": 1e9, "overhead": 0,
            "note": ["anything", 1]}


def test_a_valid_document_has_no_problems_and_ints_are_numbers():
    assert find_problems(valid_document(), DOCUMENT) == []
    check(valid_document(), DOCUMENT, PlanError)


@pytest.mark.parametrize("value, expected, problem", [
    ("tiny", Number(), "expected a number, got 'tiny'"),
    (True, Number(), "expected a number, got true"),
    (float("nan"), Number(), "expected a finite number, got nan"),
    (float("inf"), Number(at_least=0), "expected a finite number >= 0, got inf"),
    (-1, Number(at_least=0), "expected a number >= 0, got -1"),
    (0, Number(above=0), "expected a number > 0, got 0"),
    (1.5, Integer(), "expected an integer, got 1.5"),
    (False, Integer(), "expected an integer, got false"),
    (-2, Integer(at_least=0), "expected an integer >= 0, got -2"),
    (3, Text(), "expected a string, got 3"),
    (1, Flag(), "expected true or false, got 1"),
    ("yes", Flag(), "expected true or false, got 'yes'"),
    ("gpu", OneOf("cpu", "cuda"), "expected one of cpu, cuda, got 'gpu'"),
    (True, OneOf(1, 8), "expected one of 1, 8, got true"),
    ("0.9", Nullable(Number()), "expected a number or null, got '0.9'"),
    ("3x4", ListOf(Integer()), "expected a list of integers, got '3x4'"),
    ([1, 2], Fields(), "expected a mapping, got [1, 2]"),
    (None, MapOf(Number()), "expected a mapping, got null"),
    ("x" * 100, Integer(), "expected an integer, got '" + "x" * 36 + "..."),
])
def test_each_kind_of_value_says_what_it_expected_and_what_it_found(value, expected, problem):
    assert find_problems({"key": value}, Fields(required={"key": expected}), "top") == [f"top.key: {problem}"]


def test_the_document_itself_has_no_path():
    assert find_problems(7, DOCUMENT) == ["expected a mapping, got 7"]


def test_paths_name_nested_keys_and_list_items():
    data = valid_document()
    data["model"]["fingerprint"] = 12
    data["parameters"].append({"name": "v", "shape": [3, "x"], "distortion": "big"})
    data["hyperparameters"]["smmf"] = "fast"
    assert find_problems(data, DOCUMENT) == [
        "model.fingerprint: expected a string, got 12",
        "parameters[1].shape[1]: expected an integer >= 0, got 'x'",
        "parameters[1].distortion: expected a number or null, got 'big'",
        "hyperparameters.smmf: expected a mapping, got 'fast'",
    ]


def test_missing_and_unknown_keys_are_named_with_what_is_valid():
    data = valid_document()
    del data["model"]["fingerprint"]
    data["parameters"][0]["colour"] = "red"
    del data["parameters"][0]["shape"]
    assert find_problems(data, DOCUMENT) == [
        "model.fingerprint: missing, expected a string",
        "parameters[0].shape: missing, expected a list of integers >= 0",
        "parameters[0].colour: unknown key (valid: distortion, name, quality, shape, trainable)",
    ]


def test_map_keys_must_be_strings():
    assert find_problems({1: {}}, MapOf(MapOf(Anything())), "hyperparameters") == [
        "hyperparameters: key 1: expected a key that is a string"]


def test_either_reports_the_problems_of_the_option_of_the_same_kind():
    prior = Either(Number(), Fields(required={"quality": Number()}, optional={"evidence": Text()}))
    assert find_problems(0.9, prior, "methods.adam") == []
    assert find_problems({"quality": 0.9, "evidence": "paper"}, prior, "methods.adam") == []
    assert find_problems({"quality": "high"}, prior, "methods.adam") == [
        "methods.adam.quality: expected a number, got 'high'"]
    assert find_problems("high", prior, "methods.adam") == [
        "methods.adam: expected a number or a mapping, got 'high'"]


def test_several_problems_make_one_error_that_lists_a_handful():
    data = {"model": {"name": 1, "fingerprint": 2}, "parameters": [{"name": n, "shape": "?"} for n in range(5)]}
    with pytest.raises(PlanError) as error:
        check(data, DOCUMENT, PlanError, where="plan.yaml")
    message = str(error.value)
    assert message.startswith("plan.yaml: 12 problems: model.name: expected a string, got 1; "
                              "model.fingerprint: expected a string, got 2; parameters[0].name: ")
    assert message.endswith("; and 7 more") and message.count(";") == 5 and "\n" not in message


def test_describe_problems():
    assert describe_problems(["a: wrong"]) == "a: wrong"
    assert describe_problems(["a: wrong", "b: wrong"]) == "2 problems: a: wrong; b: wrong"
    assert describe_problems([str(n) for n in range(8)], limit=2) == "8 problems: 0; 1; and 6 more"
