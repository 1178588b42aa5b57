"""``python -m gpart_edu`` is the ``gpart-edu`` command (finetune, verify, recipes; --version).

Taught in notebooks/06_full_scale.ipynb, section 7 (the command from a terminal).
"""
import sys

from .cli import main

sys.exit(main())
