"""One tester per registered variant (tests/testers/<variant>.py defines TESTER): a tiny config and the knobs the
common suite needs. The common suite runs over `hf_efficient.VARIANTS`; a variant without a tester fails it."""

import importlib
import pkgutil

from .base import STYLES, TINY, VariantTester, enable_activation_checkpointing

TESTERS: dict[str, VariantTester] = {}
for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        _tester = importlib.import_module(f"{__name__}.{_module.name}").TESTER
        TESTERS[_tester.model_type] = _tester

__all__ = ["STYLES", "TESTERS", "TINY", "VariantTester", "enable_activation_checkpointing"]
