"""Core layer: errors, config ↔ flags/TOML, the artifact registry, the version-directory layout
and the TensorFlow environment. Every other package may import it; it imports none of them.

Importing this package is cheap and side-effect free (`core.tf_env` loads TensorFlow only
when imported itself).
"""
