import pytest
from hypothesis import given, strategies as st

from memplan.errors import SizeError
from memplan.sizes import format_count, format_size, parse_size


@pytest.mark.parametrize("text, expected", [
    ("64MiB", 64 * 2**20),
    ("64MB", 64 * 10**6),
    ("64mib", 64 * 2**20),
    ("64 MIB", 64 * 2**20),
    ("64mb", 64 * 10**6),
    ("1.5GiB", 3 * 2**29),
    ("1.5GB", 1_500_000_000),
    ("1e6", 1_000_000),
    ("2.5e3KB", 2_500_000),
    ("67108864", 67108864),
    ("0", 0),
    ("512B", 512),
    ("0.5KiB", 512),
    (".5KiB", 512),
    ("1TiB", 2**40),
    (1234, 1234),
])
def test_parse_size_accepts_units_and_keeps_binary_and_decimal_apart(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "-5MB", "64XB", "nan", "inf", "MiB", "1.5", "0.1B", "64M", "64k",
                                  "1e999999999", "1,000", "5 MiB MiB", True])
def test_parse_size_refuses_bad_strings_with_one_clear_error(text):
    with pytest.raises(SizeError) as error:
        parse_size(text)
    message = str(error.value)
    assert "\n" not in message and message


def test_bare_unit_letter_is_ambiguous_and_the_message_says_both_options():
    with pytest.raises(SizeError, match="MiB .*MB"):
        parse_size("64M")


@pytest.mark.parametrize("num_bytes, text", [
    (0, "0 B"), (512, "512 B"), (1024, "1 KiB"), (64 * 2**20, "64 MiB"), (204_800_000, "195.31 MiB"),
    (3 * 2**29, "1.5 GiB"), (1536, "1.5 KiB"),
])
def test_format_size(num_bytes, text):
    assert format_size(num_bytes) == text


@given(st.integers(min_value=0, max_value=2**60))
def test_format_size_of_whole_units_parses_back_exactly(count):
    for unit, size in (("KiB", 2**10), ("MiB", 2**20)):
        text = format_size(count * size)
        if "." not in text:
            assert parse_size(text.replace(" ", "")) == count * size


def test_format_count():
    assert format_count(124_439_808) == "124M"
    assert format_count(6_738_415_616) == "6.74B"
    assert format_count(512) == "512"
