"""One subpackage per variant, each declaring `VARIANT`; they are found here, so a new variant touches no other file."""

import importlib
import pkgutil

from ..core.variant import Variant


def discover() -> dict[str, Variant]:
    variants = {}
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module.ispkg:
            variant = importlib.import_module(f"{__name__}.{module.name}").VARIANT
            variants[variant.model_type] = variant
    return variants
