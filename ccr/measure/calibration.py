"""The calibration record's schema, in one place: `ccr calibrate` (ccr.study.calibrate) writes it, `ccr analyze
--calibration` (ccr.analysis.economics) reads it back through `read_calibration`."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ccr.errors import ConfigError

KIND = "ccr-calibration"
VERSION = 1


def read_calibration(text: str, where: str) -> dict[str, Any]:
    """A calibration record read back, checked: anything else is one ConfigError naming the file."""
    try:
        rec = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"--calibration {where}: not JSON ({e})") from e
    if not isinstance(rec, dict) or rec.get("kind") != KIND:
        raise ConfigError(f"--calibration {where}: not a calibration record (written by `ccr calibrate`)")
    if rec.get("version") != VERSION:
        raise ConfigError(f"--calibration {where}: calibration version {rec.get('version')!r}; this ccr reads "
                          f"{VERSION} (run `ccr calibrate` again)")
    for key in ("images_per_second", "captions_per_second"):
        v = rec.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0:
            raise ConfigError(f"--calibration {where}: {key} is {v!r}, not a positive number")
    idx = rec.get("index")
    if not isinstance(idx, dict) or not all(isinstance(idx.get(k), (int, float)) and np.isfinite(idx[k]) and
                                            idx[k] >= 0 for k in ("train_seconds", "add_seconds_per_million")):
        raise ConfigError(f"--calibration {where}: its index rates are missing or not numbers")
    return rec
