"""Built-in SAE architectures; importing this package registers all of them.

One module per architecture. To add one: write ``archs/<name>.py`` with a config
dataclass (subclass of :class:`mtsae.train.base.SAEConfig`) and an SAE class
decorated with ``@register("<name>")``, then import it below. The contract
tests in ``tests/test_architectures.py`` pick it up from the registry.
"""

from mtsae.train.archs import batchtopk, jumprelu, mtsae, relu, topk

__all__ = ["batchtopk", "jumprelu", "mtsae", "relu", "topk"]
