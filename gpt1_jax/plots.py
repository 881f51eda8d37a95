"""Training curves as PNG bytes, drawn from the rows of metrics.jsonl.

    png = render_training_curves(rows, {"unigram_loss": 6.63, "bigram_loss": 4.80})
    png = render_finetune_curves(rows, ["accuracy"])

The renderers return bytes, so the caller decides where they go (a local file, gs://
through the run directory); `write_training_curves` writes them to a path or file object.
`png_bytes` is the one PNG writer, for any other figure (`zero_shot`'s) too.
Rows are dicts with a `step` and any of `loss`, `val_loss`, `lr`, task metrics and the
harness's `val_harness/<task>/<metric>` (drawn in panels below the losses, one per kind of
metric); a key a row lacks, or a value that is not a finite number (metrics.jsonl writes NaN
as "nan"), is simply not drawn.

Every PNG records what it draws: its "Description" text is JSON, one {"panel", "series"}
per axis (`drawn_series(png)` reads it back), so a figure can be checked without reading pixels.
"""
import io
import json
import math
import os
from collections.abc import Iterable, Sequence

WIDTH_IN, HEIGHT_IN, DPI = 10, 6, 100   # 1000 x 600 pixels
TRAIN_SMOOTHING = 5                      # logged train losses averaged into the drawn line
HARNESS_HEIGHT_IN = 3.5                  # the row of harness panels added below the losses
HARNESS_PREFIX = "val_harness/"
_REFERENCE_STYLE = {
    "unigram_loss": ("unigram (count model)", "tab:red"),
    "bigram_loss": ("bigram (count model)", "tab:purple"),
}


def _series(rows: Iterable[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the rows holding a finite number under `key`, in step order."""
    points = sorted((int(row["step"]), float(value)) for row in rows
                    if isinstance(value := row.get(key), (int, float)) and math.isfinite(value))
    return [s for s, _ in points], [v for _, v in points]


def pyplot():
    """matplotlib.pyplot, drawing into memory (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def png_bytes(fig, dpi: int = DPI) -> bytes:
    """The project's one PNG writer: `fig` as PNG bytes (to `rundir.write_bytes` anywhere,
    local or gs://), its panels and series in its "Description"; the figure is closed."""
    panels = [{"panel": ax.get_title() or ax.get_ylabel(),
               "series": [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]}
              for ax in fig.get_axes()]
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Description": json.dumps(panels)})
    pyplot().close(fig)
    return buffer.getvalue()


def drawn_series(png: bytes) -> list[dict]:
    """The {"panel", "series"} list `png_bytes` recorded in a PNG."""
    from PIL import Image  # matplotlib's own dependency
    return json.loads(Image.open(io.BytesIO(png)).text["Description"])


def harness_panels(rows: Sequence[dict]) -> dict[str, list[str]]:
    """The harness metrics with a finite value in `rows`, by panel: {"score" | "perplexity" |
    "bits per byte": ["<task>/<metric>", ...]}; accuracies, exact matches, F1, MCC are scores."""
    names = {key[len(HARNESS_PREFIX):] for row in rows for key in row if key.startswith(HARNESS_PREFIX)}
    panels: dict[str, list[str]] = {"score": [], "perplexity": [], "bits per byte": []}
    for name in sorted(names):
        if _series(rows, HARNESS_PREFIX + name)[0]:
            metric = name.rsplit("/", 1)[-1]
            kind = "perplexity" if "perplexity" in metric else "bits per byte" if metric == "bits_per_byte" \
                else "score"
            panels[kind].append(name)
    return {kind: found for kind, found in panels.items() if found}


def render_training_curves(rows: Sequence[dict], reference: dict | None = None,
                           title: str = "Pre-training: next-token loss") -> bytes:
    """PNG of train and validation loss (nats per token) against the step, the reference
    levels (`reference_levels`' dict; dashed, labelled with their value) and the learning
    rate on a second y axis; below them, when the rows hold harness metrics, a row of
    panels (`harness_panels`)."""
    plt = pyplot()
    panels = harness_panels(rows)
    if not panels:
        fig, ax = plt.subplots(figsize=(WIDTH_IN, HEIGHT_IN))
    else:
        fig = plt.figure(figsize=(WIDTH_IN, HEIGHT_IN + HARNESS_HEIGHT_IN))
        grid = fig.add_gridspec(2, len(panels), height_ratios=[HEIGHT_IN, HARNESS_HEIGHT_IN])
        ax = fig.add_subplot(grid[0, :])
        for column, (kind, names) in enumerate(panels.items()):
            _draw_harness_panel(fig.add_subplot(grid[1, column]), rows, kind, names)
    train_x, train_y = _series(rows, "loss")
    val_x, val_y = _series(rows, "val_loss")
    drawn = list(train_y) + list(val_y)
    if train_x:
        # Each logged train loss is one batch's: noisy. The mean of the last few reads better.
        ax.plot(train_x, train_y, color="tab:blue", alpha=0.3, linewidth=1.0)
        smooth = [sum(train_y[max(0, i - TRAIN_SMOOTHING + 1):i + 1]) / (i + 1 - max(0, i - TRAIN_SMOOTHING + 1))
                  for i in range(len(train_y))]
        ax.plot(train_x, smooth, color="tab:blue", linewidth=1.6,
                label=f"train loss (mean of the last {TRAIN_SMOOTHING} logged)")
    if val_x:
        ax.plot(val_x, val_y, color="tab:orange", linewidth=2.2, marker="o", markersize=5,
                label=f"validation loss (step {val_x[0]}: {val_y[0]:.3f}, last: {val_y[-1]:.3f})")
    for key, (name, color) in _REFERENCE_STYLE.items():
        level = (reference or {}).get(key)
        if level is not None and math.isfinite(level):
            ax.axhline(level, color=color, linestyle="--", linewidth=1.6, label=f"{name}: {level:.3f}")
            drawn.append(level)
    levels = [v for v in drawn[len(train_y) + len(val_y):]]
    if drawn:
        # The untrained model starts near ln(V) (9 nats for 8k tokens); the picture is about
        # what happens below the reference levels, so the first steps may leave it at the top.
        focus = levels + val_y[1:]
        top = max(focus) + 0.8 if focus else max(drawn)
        bottom = min(drawn) - 0.3
        ax.set_ylim(bottom, max(top, bottom + 1.0))
    ax.set_xlabel("step", fontsize=12)
    ax.set_ylabel("cross-entropy (nats per token)", fontsize=12)
    ax.grid(True, alpha=0.3)

    lr_x, lr_y = _series(rows, "lr")
    handles, labels = ax.get_legend_handles_labels()
    if lr_x:
        lr_ax = ax.twinx()
        (line,) = lr_ax.plot(lr_x, lr_y, color="tab:gray", linewidth=1.0, linestyle=":",
                             label="learning rate (right axis)")
        lr_ax.set_ylabel("learning rate", fontsize=12, color="tab:gray")
        lr_ax.tick_params(axis="y", colors="tab:gray")
        lr_ax.set_ylim(0, max(lr_y) * 1.05 if max(lr_y) > 0 else 1.0)
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        handles.append(line)
        labels.append(line.get_label())
    if handles:
        ax.legend(handles, labels, loc="upper right", fontsize=11, framealpha=0.9)
    ax.set_title(title, fontsize=14)
    fig.tight_layout()
    return png_bytes(fig)


def _draw_harness_panel(ax, rows: Sequence[dict], kind: str, names: Sequence[str]) -> None:
    """One kind of harness metric, a line per `<task>/<metric>` (few points: markers)."""
    for name in names:
        xs, ys = _series(rows, HARNESS_PREFIX + name)
        if xs:
            ax.plot(xs, ys, linewidth=1.6, marker="o", markersize=4, label=name)
    if kind == "perplexity" and all(y > 0 for line in ax.get_lines() for y in line.get_ydata()):
        ax.set_yscale("log")  # an untrained model's perplexity is orders of magnitude above a trained one's
    ax.set_title(f"harness: {kind}", fontsize=12)
    ax.set_xlabel("step", fontsize=11)
    ax.grid(True, alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize=9, framealpha=0.9)


def write_training_curves(rows: Sequence[dict], reference: dict | None, path_or_file,
                          title: str = "Pre-training: next-token loss") -> None:
    """`render_training_curves` written to a local path or a binary file object."""
    png = render_training_curves(rows, reference, title)
    if hasattr(path_or_file, "write"):
        path_or_file.write(png)
        return
    with open(os.fspath(path_or_file), "wb") as f:
        f.write(png)


def render_finetune_curves(rows: Sequence[dict], metric_names: Sequence[str],
                           loss_names: Sequence[str] = ("loss",),
                           title: str = "Fine-tuning") -> bytes:
    """PNG of the losses (left axis) and the task metrics (right axis) against the step."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(WIDTH_IN, HEIGHT_IN))
    loss_colors = ["tab:blue", "tab:cyan", "tab:olive", "tab:brown"]
    for i, name in enumerate(loss_names):
        xs, ys = _series(rows, name)
        if xs:
            ax.plot(xs, ys, color=loss_colors[i % len(loss_colors)], linewidth=1.4, label=name)
    ax.set_xlabel("step", fontsize=12)
    ax.set_ylabel("loss", fontsize=12)
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()

    metric_ax = ax.twinx() if metric_names else None
    metric_colors = ["tab:orange", "tab:green", "tab:red", "tab:purple"]
    for i, name in enumerate(metric_names):
        xs, ys = _series(rows, name)
        if xs:
            (line,) = metric_ax.plot(xs, ys, color=metric_colors[i % len(metric_colors)],
                                     linewidth=2.2, marker="o", markersize=5,
                                     label=f"{name} (right axis, last: {ys[-1]:.3f})")
            handles.append(line)
            labels.append(line.get_label())
    if metric_ax is not None:
        metric_ax.set_ylabel("task metric", fontsize=12)
    if handles:
        ax.legend(handles, labels, loc="center right", fontsize=11, framealpha=0.9)
    ax.set_title(title, fontsize=14)
    fig.tight_layout()
    return png_bytes(fig)
