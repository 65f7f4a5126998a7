"""Transfer strategies, one module each, found through a registry
(audiopetl.models.strategies.base).

full, linear, lora, bitfit, prompt, prefix, adapter (bottleneck), conformer, and peft (any
tuner of the installed peft). A new strategy is a module here registering its class, its
settings' schema in resources/strategies/KIND.yaml, and its tests.
"""

from audiopetl.models.strategies.base import (
    WEIGHTS_FILE,
    ParameterCount,
    Strategy,
    count_parameters,
    get_strategy,
    kinds,
    register,
)

__all__ = [
    "WEIGHTS_FILE",
    "ParameterCount",
    "Strategy",
    "count_parameters",
    "get_strategy",
    "kinds",
    "register",
]
