"""Transfer curves of the quantizers (notebook 05): what each one does to a single number, at several bit widths."""
from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from ssdlab.quant.quantizers import transfer_curve

# panel title: (quantizer names, input range, bit widths (None: the quantizer has none), draw the identity line)
PANELS = {
    "DoReFa weights": (("dorefa_weight",), (-2, 2), (2, 3, 8), False),
    "DoReFa activations (s = 0.1)": (("dorefa_activation",), (-2, 12), (2, 3, 8), False),
    "IAO symmetric": (("iao_symmetric",), (-1, 1), (2, 3, 8), True),
    "IAO asymmetric": (("iao_asymmetric",), (-0.5, 1.5), (2, 3, 8), True),
    "BWN weights": (("binary_weight", "ternary_weight"), (-1, 1), (None,), True),
    "binary activations": (("binary_activation",), (-2, 2), (None,), True),
}
UNBITTED = {"binary_weight": "binary", "ternary_weight": "ternary", "binary_activation": "sign(x)"}


def plot_transfer_curves(panels: dict = PANELS, points: int = 2001) -> dict[tuple[str, str], int]:
    """One panel per entry of `panels`, every curve labelled; returns the distinct output values of each curve,
    by (panel title, curve label)."""
    columns = 3
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(15, 4 * rows), squeeze=False)
    levels = {}
    for ax, (title, (names, (low, high), bit_widths, identity)) in zip(axes.flat, panels.items()):
        x = torch.linspace(low, high, points)
        for name in names:
            for bits in bit_widths:
                y = transfer_curve(name, x, bits or 8)
                label = f"{bits} bits" if bits else UNBITTED[name]
                ax.plot(x, y, label=label)
                levels[(title, label)] = len(torch.unique(y))
        if identity:
            ax.plot(x, x, ":", color="grey", label="no quantization")
        ax.set(title=title, xlabel="input", ylabel="output")
        ax.legend(fontsize=8)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    return levels
