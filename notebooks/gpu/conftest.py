"""GPU-executed copies of the notebooks are records, not tests: CI runs on CPUs, where their stored outputs differ.

`pytest notebooks/` (nbval) therefore skips every notebook in this folder; see README.md here.
"""

collect_ignore_glob = ["*.ipynb"]
