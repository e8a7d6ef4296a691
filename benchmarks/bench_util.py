"""What several benchmark scripts share: writing their JSON, their Markdown report, and
their matplotlib figures. Imported by its siblings as `bench_util` (a script's own folder
is first on sys.path); standard library only until a figure is drawn."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: Path | str, data) -> None:
    """`data` as indented JSON at `path`, creating its folder; non-JSON values as str."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))


def write_report(out: Path, *, name: str, lines: list[str], data) -> None:
    """Print the report `lines` and write them to OUT/NAME.md, and `data` to OUT/NAME.json."""
    text = "\n".join(lines)
    print(text, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text + "\n")
    write_json(out / f"{name}.json", data)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Lay out, write at 120 dpi (creating the folder) and close `fig`."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
