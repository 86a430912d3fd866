"""The decoding cache's name across the transformers versions the package declares.

transformers 5.24 renamed the cache argument and output field `past_key_values` to `cache` (5.17-5.23 use
`past_key_values`; 5.24's `generate()` passes `cache=` and reads `outputs.cache`). Our models take either name
without a warning and return the cache under the field the installed output classes declare.
"""

from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast, ModelOutput

# the output field the installed transformers declares for the cache
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def one_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The cache of a call, given as `cache=` (transformers >= 5.24) or `past_key_values=` (earlier), not both."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("Pass the decoding cache once, as cache= (or past_key_values=), not both.")
    return cache if cache is not None else past_key_values


def returned_cache(output: ModelOutput) -> Cache | None:
    """The cache a model output carries, read under the installed field name (no deprecation warning)."""
    return getattr(output, CACHE_FIELD)
