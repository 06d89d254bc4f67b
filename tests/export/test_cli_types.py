"""Number flags refuse NaN and infinities, which click's own ranges let through."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from dfd.export.cli import main
from dfd.export.cli_types import FiniteFloatRange, RowOutput

FLAGS = [
    (["build", "--out", "x", "--calib-degrade"], "--calib-degrade"),
    (["build", "--out", "x", "--workspace-gib"], "--workspace-gib"),
    (["build", "--out", "x", "--lora-alpha"], "--lora-alpha"),
    (["degrade", "a.jpg", "--out", "x", "--share"], "--share"),
    (["verify", "set", "--max-abs-dp"], "--max-abs-dp"),
    (["verify", "set", "--max-mean-dp"], "--max-mean-dp"),
    (["verify", "set", "--min-agreement"], "--min-agreement"),
    (["detect", "set", "a.jpg", "--face-min-px"], "--face-min-px"),
]


@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize("args, flag", FLAGS, ids=[flag for _, flag in FLAGS])
def test_non_finite_values_are_usage_errors(args, flag, value):
    result = CliRunner().invoke(main, [*args, value])
    assert result.exit_code == 1, result.output
    assert f"Invalid value for '{flag}'" in result.output and "Traceback" not in result.output


def test_finite_float_range_keeps_click_bounds_and_refuses_nan():
    share = FiniteFloatRange(0, 1)
    assert share.convert("0.25", None, None) == 0.25
    for bad, message in (("nan", "'nan' is not a finite number"), ("-inf", "not in the range"),
                         ("1.5", "not in the range"), ("abc", "not a valid finite float")):
        with pytest.raises(click.BadParameter, match=message):
            share.convert(bad, None, None)
    assert FiniteFloatRange().convert("-1e300", None, None) == -1e300
    with pytest.raises(click.BadParameter, match="'inf' is not a finite number"):
        FiniteFloatRange().convert("inf", None, None)


def test_an_output_file_that_is_part_of_the_engine_set_is_refused_before_the_run(tiny_engine_set, tmp_path):
    """``bench SET --json SET/manifest.json`` wrote its results over the manifest: the set was gone."""
    manifest = tiny_engine_set / "manifest.json"
    before = manifest.read_bytes()
    for verb in (["bench", str(tiny_engine_set), "--iterations", "1", "--warmup", "0"], ["verify", str(tiny_engine_set)]):
        for target in (manifest, tiny_engine_set / "global.fp32.onnx"):
            result = CliRunner().invoke(main, [*verb, "--json", str(target)])
            assert result.exit_code == 1, result.output
            assert f"{target} is a file of the engine set {tiny_engine_set}" in result.output
    assert manifest.read_bytes() == before


def test_an_unwritable_output_file_fails_before_the_run_even_as_root(tiny_engine_set):
    """os.access says yes to root for any path: /proc/x.json passed, and the report was lost after the run."""
    result = CliRunner().invoke(main, ["verify", str(tiny_engine_set), "--json", "/proc/dfd-report.json"])
    assert result.exit_code == 1 and "cannot write /proc/dfd-report.json" in result.output
    assert "max |" not in result.output  # nothing was measured


def test_row_output_writes_one_byte_order_mark_at_the_start_of_a_file_only(tmp_path):
    """Each row was encoded on its own: with PYTHONIOENCODING=utf-8-sig every row began with a BOM."""
    path = tmp_path / "rows.csv"
    for mode, expected in (("w", "\ufeffa,1\r\nb,2\r\n"), ("a", "\ufeffa,1\r\nb,2\r\nc,3\r\n")):
        with open(path, mode, encoding="utf-8-sig", newline="") as stream:
            output = RowOutput(stream)
            for row in (["c,3\r\n"] if mode == "a" else ["a,1\r\n", "b,2\r\n"]):
                output.write(row)
        assert path.read_bytes().decode() == expected and output.rows == (1 if mode == "a" else 2)
