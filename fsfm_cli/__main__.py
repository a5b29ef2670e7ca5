"""``python -m fsfm_cli``: the ``fsfm`` command line (as the ``fsfm`` console script)."""

from fsfm_cli import app

app(prog_name="fsfm")
