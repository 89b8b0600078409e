"""The architecture the README describes is the one the code has.

- The layer contracts of setup.cfg ([importlinter]) hold: each package of landscape_mpi imports only layers below
  its own, the Krylov numerics import neither torch nor process machinery, files/ and plotting/ read without torch;
  and they catch a violation planted in a copy of the tree (an import up the layers, torch where it is forbidden).
- `ruff check` (lint and import order, pyproject.toml's [tool.ruff]) passes over the code, tests and benchmarks.
- No import cycle among the modules of landscape_mpi and plotting (lazy imports inside functions count too).
- No block of six or more lines is repeated across landscape_mpi/ and plotting/, except the pairs named in
  ALLOWED_REPEATS with their reason.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict

from conftest import ROOT

#: Repeated blocks that are deliberate: (file, file) -> why. Empty: none is.
ALLOWED_REPEATS: dict[tuple[str, str], str] = {}


def lint_imports(root: str, *args: str) -> subprocess.CompletedProcess:
    """lint-imports on the tree at `root` (its setup.cfg, its packages: the root comes first on sys.path)."""
    lint = shutil.which("lint-imports", path=os.path.dirname(sys.executable))
    assert lint, "import-linter is not installed in this environment: pip install -e '.[test]'"
    env = {**os.environ, "COLUMNS": "1000", "PYTHONPATH": root}  # one line per contract in the report
    return subprocess.run([lint, "--no-logo", *args, os.path.join(root, "setup.cfg")], cwd=root, capture_output=True,
                          text=True, timeout=300, env=env)


def contract_verdicts(output: str) -> dict[str, str]:
    """lint-imports' report: contract name -> KEPT or BROKEN."""
    return dict(re.findall(r"^(\S.*?) (KEPT|BROKEN)$", output, re.M))


def test_layer_contracts_hold():
    p = lint_imports(ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    kept = re.search(r"Contracts: (\d+) kept, (\d+) broken", p.stdout)
    assert kept and int(kept.group(1)) >= 4 and int(kept.group(2)) == 0, p.stdout


def _contracts(cfg_path: str) -> dict[str, dict[str, str]]:
    cfg = configparser.ConfigParser()
    cfg.read(cfg_path)
    return {s: dict(cfg[s]) for s in cfg.sections() if s.startswith("importlinter:contract:")}


def _lines(value: str) -> list[str]:
    return [v.strip() for v in value.strip().splitlines() if v.strip()]


def test_layer_contracts_catch_planted_violations(tmp_path):
    """A copy of the tree with two planted imports, chosen from setup.cfg's contracts (no package names written
    here): the lowest layer importing the highest, and torch imported in a package of a contract that forbids
    torch. lint-imports fails naming exactly those two contracts, and keeps the others."""
    for top in ("landscape_mpi", "plotting"):
        shutil.copytree(os.path.join(ROOT, top), tmp_path / top, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, "setup.cfg"), tmp_path / "setup.cfg")
    contracts = _contracts(str(tmp_path / "setup.cfg"))

    layered = next(c for c in contracts.values() if c["type"] == "layers")
    container = _lines(layered["containers"])[0]
    rows = [[m.strip() for m in row.split("|") if not m.strip().startswith("(")] for row in _lines(layered["layers"])]
    top, bottom = rows[0][0], rows[-1][0]
    upward = tmp_path.joinpath(*container.split("."), bottom, "_planted_upward.py")
    upward.write_text(f"import {container}.{top}\n")

    no_torch = next(c for c in contracts.values() if c["type"] == "forbidden" and "torch" in _lines(
        c["forbidden_modules"]) and any(tmp_path.joinpath(*m.split(".")).is_dir() for m in _lines(c["source_modules"])))
    source = next(m for m in _lines(no_torch["source_modules"]) if tmp_path.joinpath(*m.split(".")).is_dir())
    tmp_path.joinpath(*source.split("."), "_planted_torch.py").write_text("import torch\n")

    p = lint_imports(str(tmp_path), "--no-cache")
    verdicts = contract_verdicts(p.stdout)
    assert p.returncode != 0 and set(verdicts) == {c["name"] for c in contracts.values()}, p.stdout + p.stderr
    broken = {name for name, verdict in verdicts.items() if verdict == "BROKEN"}
    assert broken == {layered["name"], no_torch["name"]}, p.stdout
    # the copy was analysed (not the installed package): the report names the planted modules
    assert f"{container}.{bottom}._planted_upward -> {container}.{top}" in p.stdout, p.stdout
    assert f"{source}._planted_torch -> torch" in p.stdout, p.stdout


def test_ruff_passes():
    """Lint (pyflakes, pycodestyle, bugbear) and import order, configured in pyproject.toml [tool.ruff]."""
    ruff = shutil.which("ruff", path=os.path.dirname(sys.executable))
    assert ruff, "ruff is not installed in this environment: pip install -e '.[test]'"
    p = subprocess.run([ruff, "check", "--no-cache", "landscape_mpi", "plotting", "tests", "benchmarks"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-5000:] + p.stderr


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components of more than one module, or of one importing itself."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.append(m)
                    if m == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    out.append(sorted(component))
    return out


def test_strongly_connected_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _strongly_connected(graph) == [["a", "b", "c"]]


def test_no_import_cycles():
    import grimp

    graph = grimp.build_graph("landscape_mpi", "plotting", cache_dir=None)
    # A package's __init__ is not an importer of its children here: edges are the imports the code writes.
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    cycles = _strongly_connected(edges)
    assert not cycles, f"import cycles: {cycles}"


# ------------------------------------------------------------------------------------------ repeats
_SKIP = re.compile(r"^\s*(#.*|from \S+ import .*|import .*|[()\[\]{},:]*|\"\"\"|''')?\s*$")


def _code_lines(path: str) -> list[tuple[int, str]]:
    """(line number, whitespace-folded text) of the lines that count: no blanks, comments, imports, punctuation."""
    out = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not _SKIP.match(line):
                out.append((number, " ".join(line.split())))
    return out


def repeated_blocks(paths: list[str], size: int = 6) -> dict[tuple[str, str], list[tuple[int, int]]]:
    """Pairs of places (file, file) sharing `size` consecutive counted lines, with their first line numbers."""
    seen: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for path in paths:
        lines = _code_lines(path)
        for i in range(len(lines) - size + 1):
            window = "\n".join(text for _, text in lines[i:i + size])
            seen[hashlib.sha1(window.encode()).hexdigest()].append((path, lines[i][0]))
    pairs: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for places in seen.values():
        for a in range(len(places)):
            for b in range(a + 1, len(places)):
                (pa, la), (pb, lb) = sorted((places[a], places[b]))
                if pa != pb or abs(la - lb) >= size:
                    pairs[(pa, pb)].append((la, lb))
    return pairs


def test_repeated_blocks_finds_a_planted_repeat(tmp_path):
    body = "".join(f"value_{i} = compute({i}, scale * {i})\n" for i in range(8))
    (tmp_path / "a.py").write_text("def f():\n" + body.replace("value", "    value"))
    (tmp_path / "b.py").write_text("def g():\n" + body.replace("value", "    value") + "    return 1\n")
    (tmp_path / "c.py").write_text("x = 1\n" * 3)
    found = repeated_blocks([str(tmp_path / n) for n in ("a.py", "b.py", "c.py")])
    assert list(found) == [(str(tmp_path / "a.py"), str(tmp_path / "b.py"))]


def test_no_block_of_six_lines_repeated():
    paths = []
    for top in ("landscape_mpi", "plotting"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            paths += [os.path.join(folder, f) for f in files if f.endswith(".py")]
    found = repeated_blocks(sorted(paths))
    rel = {(os.path.relpath(a, ROOT), os.path.relpath(b, ROOT)): lines for (a, b), lines in found.items()}
    unexpected = {pair: lines[:3] for pair, lines in rel.items() if pair not in ALLOWED_REPEATS}
    assert not unexpected, f"blocks of 6+ lines repeated (file pair: first lines): {unexpected}"
