def test_profiles_lists_the_bundled_models(run_memplan):
    result = run_memplan("profiles", "--json")
    assert result.code == 0
    rows = {row["name"]: row for row in result.json()["profiles"]}
    assert rows["llama-7b"]["numel"] == 6_738_415_616 and rows["llama-7b"]["parameters"] == 291
    table = run_memplan("profiles")
    assert "resnet18-cifar" in table.stdout and "6.74B" in table.stdout
