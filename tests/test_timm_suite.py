"""timm's own model tests, run offline on every vision2d model.

`timm_suite/timm_test_models.py` is timm v1.0.31's tests/test_models.py with vision2d's families added to its filters.
Every test of it that is parametrised over `model_name` runs here for each vision2d model its own parametrisation
selects (so a new family is picked up without changes here), on the `test_*` variant of each family.
VISION2D_TIMM_SUITE=all runs them on every variant, and adds the test timm itself keeps out of its CI as slow
(test_prune_intermediate_layers_contract); minutes per model.
"""
import importlib.util
import inspect
import os
import warnings
from pathlib import Path

import pytest

import vision2d

_PATH = Path(__file__).parent / "timm_suite" / "timm_test_models.py"
_spec = importlib.util.spec_from_file_location("timm_test_models", _PATH)
timm_tests = importlib.util.module_from_spec(_spec)
with warnings.catch_warnings():  # timm's CI markers (base, cfg, ...) are not registered here
    warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
    _spec.loader.exec_module(timm_tests)

ALL_VARIANTS = os.environ.get("VISION2D_TIMM_SUITE") == "all"
SLOW_TESTS = {"test_prune_intermediate_layers_contract"}  # "no marker, slow, excluded from CI" in timm


def _parametrised(fn, argname):
    """The values of `fn`'s @pytest.mark.parametrize(argname, ...), or None."""
    for mark in getattr(fn, "pytestmark", []):
        if mark.name == "parametrize" and mark.args[0] == argname:
            return list(mark.args[1])
    return None


def _cases():
    ours = set(vision2d.list_models())
    for test_name, fn in sorted(vars(timm_tests).items()):
        if not test_name.startswith("test_") or not callable(fn) or (test_name in SLOW_TESTS and not ALL_VARIANTS):
            continue
        for model_name in _parametrised(fn, "model_name") or []:  # names, or names with a pretrained tag
            if model_name.split(".")[0] in ours and (ALL_VARIANTS or model_name.startswith("test_")):
                for batch_size in _parametrised(fn, "batch_size") or [None]:
                    yield pytest.param(test_name, model_name, batch_size, id=f"{test_name}-{model_name}")


CASES = list(_cases())


def test_every_vision2d_family_is_in_timm_suite():
    """Each family has a test_* variant that the suite runs, and its feature/intermediates filters include it."""
    covered = {model_name.split(".")[0] for _, model_name, _ in (case.values for case in CASES)}
    for model_name in vision2d.list_models():
        module = timm_tests.timm.models.model_entrypoint(model_name).__module__.rsplit(".", 1)[-1]
        assert module in timm_tests.FEAT_INTER_FILTERS
        family_tests = [m for m in vision2d.list_models("test_*")
                        if timm_tests.timm.models.model_entrypoint(m).__module__.endswith("." + module)]
        assert family_tests, f"family {module} has no test_* variant for the timm suite"
        assert set(family_tests) <= covered


@pytest.mark.parametrize("test_name, model_name, batch_size", CASES)
def test_timm_model_suite(test_name, model_name, batch_size):
    fn = getattr(timm_tests, test_name)
    kwargs = dict(model_name=model_name)
    parameters = inspect.signature(fn).parameters
    if "batch_size" in parameters:
        kwargs["batch_size"] = batch_size
    if "cfg_device" in parameters:
        kwargs["cfg_device"] = "meta"  # timm's fixture on torch with device contexts
    fn(**kwargs)
