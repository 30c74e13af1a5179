"""Start-up time of ``import nldist``, ``nldist --version``, ``nldist --help`` and
``nldist select --help`` (issue 28, items 4 and 5).

Each command runs ``--runs`` times in a fresh process (after one untimed warm-up run that
fills the OS file cache and the ``__pycache__``); the figures are the median, min and max
wall time of those runs. It also records which heavy third-party packages each command
leaves in ``sys.modules`` and the ten slowest imports by cumulative time of one
``python -X importtime`` run.

    .venv/bin/python bench/bench_startup.py                       # this checkout
    .venv/bin/python bench/bench_startup.py --tree /tmp/before    # another copy of nldist/
        --out bench/startup_before.json

``--tree DIR`` puts DIR first on PYTHONPATH, so that ``DIR/nldist`` is imported instead of
the checkout's (e.g. ``git archive 15079ae nldist pyproject.toml | tar -x -C /tmp/before``);
each ``nldist ...`` command is then run as ``python -c`` code calling the entry point of
``DIR/pyproject.toml`` (what the console script runs), so that it imports the same tree.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HEAVY = ("dask", "distributed", "pandas", "zarr", "torch", "matplotlib", "pyarrow", "scipy",
         "sklearn", "pydantic", "typer", "rich", "numpy")

ROOT = Path(__file__).resolve().parents[1]


#: the command lines timed besides ``import nldist``
COMMANDS = (["--version"], ["--help"], ["select", "--help"])


def entry_code(tree: Path, argv: list[str]) -> str:
    """What the ``nldist`` console script runs, from ``[project.scripts]`` of the tree's
    pyproject.toml, as ``python -c`` code with ``sys.argv = ['nldist', *argv]``."""
    text = (tree / "pyproject.toml").read_text(encoding="utf-8")
    module, attr = re.search(r'^nldist\s*=\s*"([\w.]+):(\w+)"', text, re.M).groups()
    return (f"import sys\nsys.argv = {['nldist', *argv]!r}\nfrom {module} import {attr}\n"
            f"try:\n    {attr}()\nexcept SystemExit:\n    pass")


def timed(cmd: list[str], env: dict, runs: int) -> list[float]:
    subprocess.run(cmd, env=env, capture_output=True, check=True, cwd="/")  # warm-up
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, capture_output=True, check=True, cwd="/")
        out.append(time.perf_counter() - t0)
    return out


def loaded(py: str, code: str, env: dict) -> list[str]:
    probe = (f"import sys\n{code}\n"
             f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    r = subprocess.run([py, "-c", probe], env=env, capture_output=True, text=True, check=True,
                       cwd="/")
    return r.stdout.splitlines()[-1].split() if r.stdout.strip() else []


def importtime(py: str, code: str, env: dict, top: int = 10) -> list[tuple[str, float]]:
    """The slowest third-party imports of one ``-X importtime`` run (cumulative seconds; a
    module is left out when a listed package already contains it)."""
    r = subprocess.run([py, "-X", "importtime", "-c", code], env=env, capture_output=True,
                       text=True, cwd="/")
    rows = []
    for line in r.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|\s*(\S+)", line)
        if m and not m.group(3).startswith(("nldist", "encodings", "site", "__")):
            rows.append((m.group(3), int(m.group(2)) / 1e6))
    kept: list[tuple[str, float]] = []
    for name, t in sorted(rows, key=lambda r: -r[1]):
        if not any(name == k or name.startswith(k + ".") for k, _ in kept):
            kept.append((name, round(t, 3)))
    return kept[:top]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tree", help="directory holding the nldist/ package to time")
    ap.add_argument("--label", default=None)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = ap.parse_args()

    py = sys.executable
    script = str(Path(py).with_name("nldist"))
    env = dict(os.environ)
    if args.tree:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.tree, env.get("PYTHONPATH")]))
    tree = Path(args.tree) if args.tree else ROOT
    codes = {"import nldist": "import nldist"}
    codes.update({"nldist " + " ".join(argv): entry_code(tree, argv) for argv in COMMANDS})
    cmds = {name: [py, "-c", code] for name, code in codes.items()}
    if Path(script).exists() and not args.tree:
        for argv in COMMANDS:  # the console script itself
            cmds["nldist " + " ".join(argv)] = [script, *argv]
    result = {"label": args.label or (args.tree or "checkout"), "runs": args.runs,
              "python": platform.python_version(), "cpus": os.cpu_count(),
              "load_avg_before": os.getloadavg(), "commands": {}}
    for name, cmd in cmds.items():
        times = timed(cmd, env, args.runs)
        result["commands"][name] = {
            "argv": cmd, "seconds": [round(t, 3) for t in times],
            "median": round(statistics.median(times), 3), "min": round(min(times), 3),
            "max": round(max(times), 3),
            "heavy_modules_loaded": loaded(py, codes[name], env),
            "slowest_imports_s": importtime(py, codes[name], env),
        }
        r = result["commands"][name]
        print(f"{name:22s} median {r['median']:.3f} s (min {r['min']:.3f}, max {r['max']:.3f}; "
              f"{args.runs} runs)  loads: {' '.join(r['heavy_modules_loaded']) or '-'}")
        print("    slowest imports: " + ", ".join(f"{m} {t:.2f}" for m, t in
                                                    r["slowest_imports_s"][:6]))
    result["load_avg_after"] = os.getloadavg()
    print(f"load average before/after: {result['load_avg_before'][0]:.2f} / "
          f"{result['load_avg_after'][0]:.2f} ({result['cpus']} CPUs)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
