"""Generate the default example's dataset: a small synthetic machine-condition classification problem.

The output is committed under ``data/``; run this only to regenerate it::

    python make_dataset.py            # writes data/train/train.csv and data/validation/validation.csv

Each of the four classes is a pair of Gaussian clusters placed symmetrically around the centre of a
latent space, so the class means coincide and no linear model separates them; a small MLP does. The
latent points are mapped to eight sensor readings with realistic, very different scales (so feature
scaling matters), two of which carry no signal, and a little label noise is added.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

FEATURE_NAMES = (
    "temperature_c",
    "vibration_rms",
    "pressure_kpa",
    "rpm",
    "current_a",
    "voltage_v",
    "humidity_pct",
    "acoustic_db",
)
CLASS_NAMES = ("normal", "bearing_wear", "overheating", "electrical_fault")
LABEL_COLUMN = "label"

_LATENT_DIMS = 6
_CENTRE_NORM = 2.6
_CLUSTER_STD = 0.5
_LABEL_NOISE = 0.01
# Per-feature (offset, scale) for the sensors fed by the latent space; the last two are pure noise.
_SENSOR_SCALES = ((65.0, 6.0), (2.5, 0.6), (310.0, 18.0), (1750.0, 120.0), (12.0, 1.5), (400.0, 4.0))
_NOISE_SENSORS = ((45.0, 12.0), (78.0, 5.0))
_DECIMALS = (2, 4, 2, 1, 3, 2, 2, 2)


def generate(n_rows: int, rng: np.random.Generator, centres: np.ndarray, mixing: np.ndarray) -> list[list[str]]:
    """Return ``n_rows`` CSV rows (features then label) drawn from the class-conditional mixture."""
    n_classes = centres.shape[0]
    labels = rng.integers(0, n_classes, size=n_rows)
    signs = rng.choice(np.array([-1.0, 1.0]), size=n_rows)
    latent = centres[labels] * signs[:, None] + rng.normal(0.0, _CLUSTER_STD, size=(n_rows, _LATENT_DIMS))
    mixed = latent @ mixing
    columns = [offset + scale * mixed[:, i] for i, (offset, scale) in enumerate(_SENSOR_SCALES)]
    columns += [offset + scale * rng.normal(size=n_rows) for offset, scale in _NOISE_SENSORS]
    flip = rng.random(n_rows) < _LABEL_NOISE
    labels = np.where(flip, rng.integers(0, n_classes, size=n_rows), labels)
    rows = []
    for r in range(n_rows):
        values = [f"{columns[c][r]:.{_DECIMALS[c]}f}" for c in range(len(FEATURE_NAMES))]
        rows.append([*values, CLASS_NAMES[labels[r]]])
    return rows


def write_csv(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow([*FEATURE_NAMES, LABEL_COLUMN])
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data")
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--train-rows", type=int, default=2400)
    parser.add_argument("--validation-rows", type=int, default=600)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    directions = rng.normal(size=(len(CLASS_NAMES), _LATENT_DIMS))
    centres = _CENTRE_NORM * directions / np.linalg.norm(directions, axis=1, keepdims=True)
    mixing, _ = np.linalg.qr(rng.normal(size=(_LATENT_DIMS, _LATENT_DIMS)))
    write_csv(args.out / "train" / "train.csv", generate(args.train_rows, rng, centres, mixing))
    write_csv(args.out / "validation" / "validation.csv", generate(args.validation_rows, rng, centres, mixing))


if __name__ == "__main__":
    main()
