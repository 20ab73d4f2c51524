"""`python -m bench`'s command line: which words name benchmarks, which are theirs."""

from __future__ import annotations

import pytest

from bench.__main__ import BENCHMARKS, main, split_argv


def test_option_values_go_to_the_benchmark_not_taken_for_names() -> None:
    # Used to stop with a usage error: "relay" was taken for a benchmark name.
    assert split_argv(["bearer_relay", "--scenario", "relay", "--steps", "500"]) == (
        ["bearer_relay"],
        ["--scenario", "relay", "--steps", "500"],
    )


def test_no_names_runs_every_benchmark_with_the_options() -> None:
    assert split_argv([]) == (BENCHMARKS, [])
    assert split_argv(["--quick"]) == (BENCHMARKS, ["--quick"])


def test_several_names_share_the_options() -> None:
    assert split_argv(["sip_parse", "control", "--quick"]) == (
        ["sip_parse", "control"],
        ["--quick"],
    )


def test_an_unknown_leading_word_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="not a benchmark: relay"):
        split_argv(["relay", "--steps", "500"])
    assert main(["bearer_relay", "relay"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m bench") and "not a benchmark: relay" in err
