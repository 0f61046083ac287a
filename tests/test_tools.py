"""The command-line tools behave like tools: every option explained with its default, progress while working,
only measured numbers reported, and bad input refused before any work starts."""
import argparse
import importlib.util
import re
import statistics
from pathlib import Path

import pytest

import vision2d
from vision2d.train.config import DIGITS_RECIPE, build_parser as train_parser, parse_args

REPO = Path(__file__).resolve().parents[1]


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _options(parser: argparse.ArgumentParser):
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


@pytest.mark.parametrize("parser", [load_tool("benchmark").build_parser(), load_tool("validate").build_parser(),
                                    train_parser()], ids=["benchmark", "validate", "train"])
def test_every_option_is_explained_with_its_default(parser):
    assert issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
    undocumented = [a.dest for a in _options(parser) if not a.help]
    assert not undocumented, f"options without help text: {undocumented}"
    text = parser.format_help()
    assert text.count("(default:") >= len([a for a in _options(parser) if not a.required])


def test_train_help_shows_the_defaults_of_the_digits_job(monkeypatch):
    monkeypatch.setenv("COLUMNS", "10000")  # no wrapping inside the values
    entries = [" ".join(entry.split()) for entry in re.split(r"\n(?=  -)", train_parser().format_help())]
    for key, value in DIGITS_RECIPE.items():
        option = next(a for a in train_parser()._actions if a.dest == key).option_strings[0]
        entry = next(e for e in entries if re.match(rf"{re.escape(option)}[ ,]", e))
        assert re.search(rf"\(default: .*; the digits job, without --data-dir and --config: {re.escape(str(value))}\)",
                         entry), entry
    args = parse_args([])  # what the no-argument run really uses
    assert {key: getattr(args, key) for key in DIGITS_RECIPE} == DIGITS_RECIPE


def test_train_reports_an_unknown_model_before_building_data(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'mamba2d_tinyy'.*close matches: mamba2d_tiny") as error:
        load_tool("train").main(["--model", "mamba2d_tinyy", "--output", str(tmp_path)])
    assert all(name in str(error.value) for name in vision2d.list_models())
    assert not list(tmp_path.iterdir()), "data was built before the model name was checked"


def test_validate_asks_only_for_the_split_it_reads(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError) as error:
        load_tool("validate").validate(["--checkpoint", str(REPO / "checkpoints/test_mamba2d_digits.safetensors"),
                                        "--data-dir", str(tmp_path), "--workers", "0"])
    assert "has no 'val' folder; expected <data-dir>/val/<class>/<image>" in str(error.value)
    assert "train" not in str(error.value).split("expected")[1]


def test_benchmark_reports_only_measured_numbers_with_progress(capsys):
    benchmark = load_tool("benchmark")
    benchmark.main(["test_mamba2d", "--img-size", "32", "--batch-size", "2", "--rounds", "2", "--warmup", "1",
                    "--no-memory", "--threads", "1"])
    out, err = capsys.readouterr()
    assert "nan" not in out.lower() and "peak mem" not in out
    assert re.search(r"\| test_mamba2d \| 0\.3 \| [\d.]+ \| 1\.00x \| 1\.00-1\.00 \| [\d.]+ \| [\d.]+ \|", out), out
    assert "round 2/2" in err and "building test_mamba2d" in err
    benchmark.main(["test_mamba2d", "--img-size", "32", "--rounds", "1", "--warmup", "1", "--no-memory", "--threads",
                    "1", "--latency-only"])
    out, err = capsys.readouterr()
    assert re.search(r"\| test_mamba2d \| 0\.3 \| [\d.]+ \| 1\.00x \| 1\.00-1\.00 \|\n", out) and "img/s" not in out, out
    assert "'eval'" not in err and "'train'" not in err
    benchmark.main(["--op", "--shapes", "1x3x4x2x2", "--rounds", "1", "--threads", "1"])
    out, err = capsys.readouterr()
    assert "| 1x3x4x2x2 | float32 | reference |" in out and "nan" not in out.lower()
    assert "scan shape 1x3x4x2x2" in err


def test_benchmark_ratio_pairs_rounds():
    """The ratio is the median of per-round ratios: a round where the whole machine ran slow shifts neither model's
    share (the ratio of the two medians would read 2x here)."""
    benchmark = load_tool("benchmark")
    ratios = benchmark.round_ratios([1.0, 2.0, 8.0], [1.0, 1.0, 8.0])
    assert ratios == [1.0, 2.0, 1.0] and statistics.median(ratios) == 1.0
    assert statistics.median([1.0, 2.0, 8.0]) / statistics.median([1.0, 1.0, 8.0]) == 2.0
    with pytest.raises(ValueError):
        benchmark.round_ratios([1.0], [1.0, 2.0])


def test_benchmark_rejects_an_unknown_model_with_our_list():
    with pytest.raises(SystemExit, match="unknown model 'mamba2d_tinyy'.*test_mamba2d"):
        load_tool("benchmark").main(["mamba2d_tinyy", "--no-memory"])
