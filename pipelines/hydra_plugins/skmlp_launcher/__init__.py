"""skmlp's Hydra launcher plugin (``hydra/launcher=together``).

Hydra instantiates only launchers of the ``hydra_plugins`` namespace package; this
folder is installed as ``hydra_plugins.skmlp_launcher`` (``pyproject.toml``'s
``package-dir``), the logic lives in :mod:`pipelines.together`.
"""
