"""Collect the lab runs of ``bench/lab_fashion_mnist.sh`` into markdown for docs/lab.md.

For each finished experiment under ``LAB`` (default ``runs/lab``): its command settings
(epochs, seeds, subset, from ``lab.json``), ``table.md``, the verdicts, and its plot,
copied to ``docs/img/lab-NAME.png``. Prints the markdown; nothing in it is typed by hand.

    python bench/lab_collect.py [LAB] > /tmp/lab-results.md
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
from pathlib import Path

from cnnlab.lab.experiments import EXPERIMENTS


def section(name: str, folder: Path, state: dict, img_dir: Path) -> str:
    settings = state["settings"]
    with (folder / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    seconds = [float(r["seconds"]) for r in rows if r.get("seconds")]
    minutes = sum(v for v in seconds if math.isfinite(v)) / 60  # a diverged run has no time
    shutil.copyfile(folder / "plot.png", img_dir / f"lab-{name}.png")
    exp = EXPERIMENTS[name]
    options = " ".join(f"--model-opt {k}={v}" for k, v in settings.get("model_options", {}).items())
    length = f"--budget {settings['budget_seconds'] / 60:.0f}m" if settings.get("budget_seconds") else f"--epochs {state['epochs']}"
    subset = f" --train-subset {settings['subset']}" if settings.get("subset") else ""
    batch = f" --batch-size {settings['batch_size']}" if settings.get("batch_size", 128) != 128 else ""
    verdicts = [line for line in (folder / "verdict.md").read_text().splitlines() if line.startswith("- ")]
    return "\n".join([
        f"### `{name}`: {exp.question}", "",
        f"`cnnlab lab run {name}{subset}{batch} --seeds {settings['seeds']} {length}{' ' + options if options else ''}`: "
        f"**{state['epochs']} epoch(s) per run**, {len(rows)} runs, {minutes:.1f} min of training.", "",
        (folder / "table.md").read_text().strip(), "", *verdicts, "",
        f"![{name}](img/lab-{name}.png)", "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lab", nargs="?", default="runs/lab")
    parser.add_argument("--img-dir", default="docs/img")
    args = parser.parse_args()
    for name in EXPERIMENTS:
        folder = Path(args.lab) / name
        state = json.loads((folder / "lab.json").read_text()) if (folder / "lab.json").is_file() else {}
        if state.get("finished"):
            print(section(name, folder, state, Path(args.img_dir)))
        else:
            print(f"### `{name}`\n\nnot run (no finished lab in {folder})\n")


if __name__ == "__main__":
    main()
