"""The ``mtsae`` subcommands, one module per stage; :mod:`mtsae.cli` builds the app from them.

Each module defines its command bodies and ``register(app)``; options that set a settings dataclass are
generated from its fields (:mod:`mtsae.commands.options`). Adding a command is a module here (or a function
in one) plus its line in ``register`` and, for a new module, one entry in ``mtsae.cli.COMMAND_MODULES``.
Nothing here imports torch at import time: ``mtsae --help`` and usage errors stay fast.
"""
