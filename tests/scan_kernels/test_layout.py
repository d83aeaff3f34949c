"""The one-way import rule of ``scan_kernels`` (docs/architecture.md §scan_kernels layout), checked on the source.

Every module of an op folder (``scan_kernels/_<op>/``) may import from ``algornn.scan_kernels._common``, from its
own folder and public names of the package itself (``from algornn.scan_kernels import linear_scan``), never a
module of another op folder; ``_common`` imports no op folder and not the package (which imports every op).
"""

import ast
from pathlib import Path

import pytest

import algornn.scan_kernels as sk

ROOT = Path(sk.__file__).parent
PKG = "algornn.scan_kernels"
OP_FOLDERS = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").exists() and p.name != "_common")


def _imports(path: Path):
    """``(line, module, names)`` of every import in ``path`` (top level and inside functions), absolute names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            # relative imports are not used in this project: reported as such by ``_violations``
            module = "." * node.level + (node.module or "") if node.level else node.module
            yield node.lineno, module, tuple(a.name for a in node.names)


def _owner(module: str):
    """The top folder of ``scan_kernels`` that ``module`` lies in (``"_common"``, ``"_delta_rule"``, ...), ``""`` for
    the package itself, None outside ``scan_kernels``."""
    if module == PKG:
        return ""
    if not module.startswith(PKG + "."):
        return None
    return module[len(PKG) + 1 :].split(".")[0]


def _violations(path: Path):
    folder = path.relative_to(ROOT).parts[0] if len(path.relative_to(ROOT).parts) > 1 else None
    out = []
    for line, module, names in _imports(path):
        if module.startswith("."):
            out.append(f"{path.name}:{line} relative import {module}: use absolute algornn.scan_kernels names")
            continue
        owner = _owner(module)
        if owner is None or folder is None:  # not a scan_kernels import, or the package __init__ itself
            continue
        if owner == "":  # ``from algornn.scan_kernels import x``: public names only, and never from _common
            if folder == "_common":
                out.append(f"{path.name}:{line} _common imports the package (and with it every op)")
            for name in names:
                if name.startswith("_"):
                    out.append(f"{path.name}:{line} imports the private module {name} through the package")
            continue
        if folder == "_common" and owner != "_common":
            out.append(f"{path.name}:{line} _common imports the op folder {owner}")
        elif folder != "_common" and owner not in ("_common", folder):
            out.append(f"{path.name}:{line} {folder} imports {module} of the op folder {owner}")
    return out


def _modules():
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def test_layout_has_op_folders_and_no_flat_modules():
    assert {"_linear_scan", "_dense_scan", "_linear_attention", "_delta_rule", "_rg_lru"} <= set(OP_FOLDERS)
    flat = [p.name for p in ROOT.glob("*.py") if p.name != "__init__.py"]
    assert flat == [], f"modules outside an op folder or _common: {flat}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_one_way(path):
    assert _violations(path) == []


def test_rule_catches_cross_op_and_common_to_op_imports(tmp_path, monkeypatch):
    """The checker itself: fabricated modules that break each part of the rule are reported."""
    root = tmp_path / "scan_kernels"
    for folder in ("_common", "_a", "_b"):
        (root / folder).mkdir(parents=True)
    bad = {
        "_a/op.py": "from algornn.scan_kernels._b.op import f\n",
        "_a/pallas.py": "def g():\n    import algornn.scan_kernels._b.pallas\n",
        "_a/x.py": "from algornn.scan_kernels import _b\n",
        "_common/u.py": "from algornn.scan_kernels._a import op\n",
        "_common/v.py": "from algornn.scan_kernels import linear_scan\n",
        "_b/rel.py": "from ..common import backend\n",
    }
    good = {
        "_a/ok.py": "from algornn.scan_kernels import linear_scan\nfrom algornn.scan_kernels._common.backend import x\n"
        "from algornn.scan_kernels._a.op import f\nimport jax\n",
        "_common/ok.py": "from algornn.scan_kernels._common.validate import check_int\n",
    }
    for rel, src in {**bad, **good}.items():
        (root / rel).write_text(src)
    monkeypatch.setitem(globals(), "ROOT", root)
    for rel in bad:
        assert _violations(root / rel), rel
    for rel in good:
        assert _violations(root / rel) == [], rel
