"""A marker for methods the installed plugin has and its Hub bundles (hf_efficient.bundle) leave out."""

from collections.abc import Callable


def plugin_only(function: Callable) -> Callable:
    """Mark a method as the plugin's own: the generated bundle of a variant drops it, so the bundled class keeps
    the behaviour it inherits (transformers'). For hooks that need the package itself, such as writing the bundle."""
    return function
