"""The in-image ``serve`` runtime: nginx in front of gunicorn running a Flask app (contract.md §3-§6).

Importing this package does nothing; see :mod:`smbyoc.serving.main` for the ``serve`` program and
:mod:`smbyoc.serving.supervisor` for starting it from Python.
"""
