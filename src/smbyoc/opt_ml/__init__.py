"""The files SageMaker writes under ``/opt/ml/input/config``: one module per file.

Each module owns one file's shape, its limits and defaults, and both reads it (the in-image runtime) and
writes it (the emulator), so the two sides cannot drift apart:

* :mod:`smbyoc.opt_ml.hyperparameters_file` — ``hyperparameters.json``;
* :mod:`smbyoc.opt_ml.resource_config_file` — ``resourceconfig.json``;
* :mod:`smbyoc.opt_ml.input_data_config_file` — ``inputdataconfig.json``.

Where the files lie is :class:`smbyoc.paths.Paths`'s business. Standard library only: the ``train``
runtime in every image imports these.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any


class _NotGiven(Mapping[str, Any]):
    """An empty, hashable mapping: the default of a ``document``/``config`` field nobody passed."""

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "NOT_GIVEN"


#: A typed value's JSON as read was not given: the value's own ``to_json()`` stands in for it.
NOT_GIVEN: Mapping[str, Any] = _NotGiven()
