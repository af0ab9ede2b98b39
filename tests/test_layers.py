"""The layer rules of DESIGN.md, checked: a violation fails with the import chain.

* ``txm_live.analysis`` loads none of bluesky, ophyd, event_model, tiled, databroker, h5py;
* ``txm_live.plans`` never imports ``simulators``;
* ``txm_live.devices`` never imports ``txm_live.callbacks``.

Each package is imported in a fresh interpreter that records who imported whom; any
forbidden module found in ``sys.modules`` is reported with the chain that brought it in
(e.g. ``txm_live.analysis -> txm_live.analysis._partial -> h5py``). Imports inside
functions (not run at import time) are caught by reading the source.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_RECORDER = textwrap.dedent('''
    import json, sys

    class _Recorder:
        """Remember, for every module, the module whose code first imported it."""
        parents = {}

        def find_spec(self, fullname, path=None, target=None):
            if fullname not in self.parents:
                frame = sys._getframe(1)
                while frame is not None and (frame.f_globals.get("__name__", "").startswith("importlib")
                                             or frame.f_code is _Recorder.find_spec.__code__):
                    frame = frame.f_back
                self.parents[fullname] = frame.f_globals.get("__name__") if frame else None
            return None

    sys.meta_path.insert(0, _Recorder())
    sys.path[:0] = EXTRA_PATH
    import importlib
    for name in TARGETS:
        importlib.import_module(name)
    def forbidden(name):
        return name is not None and any(name == f or name.startswith(f + ".") for f in FORBIDDEN)

    chains = {}
    for name in sorted(sys.modules):
        # where a forbidden package was entered (not its own submodules)
        if forbidden(name) and not forbidden(_Recorder.parents.get(name)):
            chain, seen = [name], set()
            while chain[-1] in _Recorder.parents and chain[-1] not in seen:
                seen.add(chain[-1])
                parent = _Recorder.parents[chain[-1]]
                if parent is None or parent == "__main__":
                    break
                chain.append(parent)
            chains[name] = " -> ".join(reversed(chain))
    print(json.dumps(chains))
''')


def import_chains(targets, forbidden, extra_path=()) -> dict[str, str]:
    """Import ``targets`` in a fresh interpreter; forbidden module -> the chain that loaded it."""
    code = (f"TARGETS = {list(targets)!r}\nFORBIDDEN = {list(forbidden)!r}\nEXTRA_PATH = {list(map(str, extra_path))!r}\n"
            + _RECORDER)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def source_imports(package: Path, root: Path = ROOT) -> list[tuple[str, int, str]]:
    """(file, line, module) of every import statement in a package's source, lazy ones too."""
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(root)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [(str(rel), node.lineno, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((str(rel), node.lineno, node.module))
            elif isinstance(node, ast.ImportFrom) and node.level > 0:
                base = ".".join(rel.with_suffix("").parts[: -node.level])
                found.append((str(rel), node.lineno, f"{base}.{node.module}" if node.module else base))
    return found


def _violations(imports, forbidden):
    return [f"{file}:{line} imports {module}" for file, line, module in imports
            if any(module == f or module.startswith(f + ".") for f in forbidden)]


ANALYSIS_FORBIDDEN = ("bluesky", "ophyd", "event_model", "tiled", "databroker", "h5py")
RULES = [
    # (package imported, forbidden modules)
    ("txm_live.analysis", ANALYSIS_FORBIDDEN),
    ("txm_live.plans", ("simulators",)),
    ("txm_live.devices", ("txm_live.callbacks",)),
]


@pytest.mark.parametrize("package, forbidden", RULES, ids=[r[0] for r in RULES])
def test_importing_the_package_loads_nothing_forbidden(package, forbidden):
    folder = ROOT.joinpath(*package.split("."))
    modules = [package] + [f"{package}.{p.stem}" for p in sorted(folder.glob("*.py")) if p.stem != "__init__"]
    chains = import_chains(modules, forbidden)
    assert not chains, f"{package} must not load {forbidden}; it did:\n" + "\n".join(chains.values())


@pytest.mark.parametrize("package, forbidden", RULES, ids=[r[0] for r in RULES])
def test_no_forbidden_import_anywhere_in_the_source(package, forbidden):
    bad = _violations(source_imports(ROOT.joinpath(*package.split("."))), forbidden)
    assert not bad, f"{package} must not import {forbidden}:\n" + "\n".join(bad)


def test_the_checks_catch_a_violation_and_name_its_chain(tmp_path):
    """Negative control: a package that imports a forbidden module two levels down."""
    pkg = tmp_path / "layered"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from . import _middle\n")
    (pkg / "_middle.py").write_text("from ._leaf import value\n")
    (pkg / "_leaf.py").write_text("import h5py\nvalue = 1\n\ndef later():\n    import bluesky\n")
    chains = import_chains(["layered"], ("h5py",), extra_path=[tmp_path])
    assert chains["h5py"] == "layered -> layered._middle -> layered._leaf -> h5py"
    # the lazy import inside a function never ran, but the source check finds it
    assert "bluesky" not in import_chains(["layered"], ("bluesky",), extra_path=[tmp_path])
    assert _violations(source_imports(pkg, root=tmp_path), ("bluesky",)) == ["layered/_leaf.py:5 imports bluesky"]
    # relative imports are resolved to their package
    assert ("layered/_middle.py", 1, "layered._leaf") in source_imports(pkg, root=tmp_path)
