"""A config file for ml_collections' ``--config`` flag that reads a run's saved config:
``--config=PATH/TO/cowmix_jax/saved_config.py:WORKDIR`` (or ``:WORKDIR/config.json``).

``evaluate.py`` and ``predict.py`` use it when ``--config`` is omitted or names a
``.json`` file (see ``evaluate.config_argv``); ``--config.KEY=VALUE`` overrides apply on
top as usual.
"""

from cowmix_jax import checkpoints


def get_config(run: str):
  return checkpoints.load_config(run)
