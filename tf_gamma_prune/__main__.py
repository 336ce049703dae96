"""tf-gamma-prune: prune, export and time Keras models for phones.

Run ``python -m tf_gamma_prune --help`` for the commands (see :mod:`tf_gamma_prune.cli`).
"""

from tf_gamma_prune.cli import __doc__ as __doc__  # noqa: F401  absl prints it as usage
from tf_gamma_prune.cli import run

if __name__ == "__main__":
    run()
