import csv
import io

import yaml

from memplan.profile import ModelProfile


def test_bundled_profile_json_is_one_document_with_exact_integers(run_memplan, tmp_path):
    result = run_memplan("analyze", "resnet50", "--json")
    assert result.code == 0, result.stderr
    document = result.json()
    assert document["source"] == "resnet50"
    assert document["totals"]["numel"] == 25_557_032
    assert document["methods"]["adam"]["state_bytes"] == 8 * 25_557_032
    assert list(document["methods"]) == ["adam", "adagrad", "sgd", "adafactor", "came", "sm3", "smmf", "et1",
                                         "et2", "et3", "et_inf"]
    assert ModelProfile.load(tmp_path / ".memplan" / "profile.yaml").fingerprint == document["fingerprint"]


def test_tables_name_the_layouts_and_the_methods(run_memplan):
    result = run_memplan("analyze", "gpt2", "--methods", "adam,smmf:sign_bits=8,et2")
    assert result.code == 0, result.stderr
    assert "transformer.wte.weight (tied: lm_head.weight)" in result.stdout
    assert "5087x4608" not in result.stdout and "50257x768" in result.stdout
    assert "smmf:sign_bits=8" in result.stdout and "949.4 MiB" in result.stdout
    assert "profile written to .memplan/profile.yaml" in result.stderr


def test_csv_and_out(run_memplan, tmp_path, tiny_model_file):
    result = run_memplan("analyze", tiny_model_file, "--format", "csv", "--out", tmp_path / "p" / "tiny.yaml")
    assert result.code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [row["name"] for row in rows][:2] == ["scale", "embed.weight"]
    assert rows[1]["aliases"] == "head.weight" and rows[1]["smmf"] == "40x40"
    saved = yaml.safe_load((tmp_path / "p" / "tiny.yaml").read_text())
    assert saved["made_with"].startswith("memplan analyze ")


def test_every_source_kind_through_the_command(run_memplan, tmp_path, tiny_model_file):
    import torch
    from safetensors.torch import save_file

    torch.save({"module.fc.weight": torch.zeros(3, 2)}, tmp_path / "ddp.pt")
    save_file({"fc.weight": torch.zeros(3, 2)}, tmp_path / "w.safetensors")
    assert run_memplan("analyze", tiny_model_file, "--entry", "TinyNet", "--json").json()["totals"]["parameters"] == 8
    stripped = run_memplan("analyze", tmp_path / "ddp.pt", "--strip-prefix", "module.", "--json").json()
    assert stripped["parameters"][0]["name"] == "fc.weight"
    assert run_memplan("analyze", tmp_path / "w.safetensors", "--json").json()["totals"]["numel"] == 6
    again = run_memplan("analyze", tmp_path / ".memplan" / "profile.yaml", "--json")
    assert again.code == 0 and again.json()["totals"]["numel"] == 6


def test_freeze_removes_state(run_memplan):
    frozen = run_memplan("analyze", "gpt2", "--freeze", "^transformer", "--methods", "adam", "--json").json()
    assert frozen["methods"]["adam"]["state_bytes"] == 0   # lm_head is tied to wte, so it is frozen too
    assert not any(p["trainable"] for p in frozen["parameters"])
