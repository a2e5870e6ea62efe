"""Result tables for the notebooks: measured rows as a DataFrame whose columns say what they hold."""
from __future__ import annotations

import pandas as pd

# measure() / measure_checkpoints() keys -> column names a reader understands
COLUMNS = {"params": "params", "size_mib": "size (MiB)", "macs": "MACs (M)", "latency_ms": "latency (ms)",
           "voc_map": "VOC mAP@0.5", "coco_ap": "COCO AP", "quantization": "quantization"}


def results_table(rows: list[dict], drop: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per model (indexed by its name), MACs in millions, readable column names; `drop`: keys left out
    (columns nobody measured, all None, are left out too)."""
    table = pd.DataFrame(rows).set_index("model")
    table = table[[key for key in COLUMNS if key in table and key not in drop and table[key].notna().any()]]
    if "macs" in table:
        table["macs"] = table["macs"] / 1e6
    return table.rename(columns=COLUMNS)
