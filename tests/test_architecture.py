"""The import graph of src/elt follows docs/architecture.md: imports go down the layers or stay in their
own package (never up, never sideways to a sibling), and no modules import each other in a cycle.
Lazy imports inside functions count too. And `elt --help` does not import torch."""
import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "elt"


def layers() -> dict[str, int]:
    """{top-level package or module under elt: layer}, read from the ```layers block of the doc."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md has no ```layers block"
    out = {}
    for line in block.group(1).splitlines():
        m = re.match(r"layer (\d+): (.+)", line.strip())
        if m:
            out.update({name: int(m.group(1)) for name in m.group(2).split()})
    return out


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def imports(name: str, path: Path, known: dict) -> set[str]:
    """The elt modules `name` imports (relative imports resolved; `from P import x` is P.x when x is a module)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "elt"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "elt":
                continue
            subs = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known}
            found |= subs or {target}
    return {m for m in found if m in known and m != name}


def component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "elt"


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_package_has_a_layer():
    table = layers()
    tops = {component(m) for m in modules()} - {"elt", "__main__"}
    assert tops <= set(table), f"packages without a layer in docs/architecture.md: {sorted(tops - set(table))}"


def test_imports_go_down_the_layers_or_stay_in_their_package():
    table, bad = layers(), []
    for src, targets in graph().items():
        a = component(src)
        for dst in targets:
            b = component(dst)
            if b in ("elt", "__main__"):
                bad.append(f"{src} -> {dst} (nothing imports the package facade)")
            elif a in ("elt", "__main__") or a == b:
                continue
            elif table[b] >= table[a]:
                kind = "sideways" if table[b] == table[a] else "upward"
                bad.append(f"{src} -> {dst} ({kind}: layer {table[a]} -> {table[b]})")
    assert not bad, "imports against docs/architecture.md:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    g = graph()
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(g[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_a_violation(tmp_path, monkeypatch):
    """The walk resolves relative imports: a core module importing the engine is flagged."""
    fake = {"elt.core.looped": PKG / "core" / "looped.py", "elt.engine.train": PKG / "engine" / "train.py"}
    path = tmp_path / "looped.py"
    path.write_text("from ..engine import train\n")
    got = imports("elt.core.looped", path, fake)
    assert got == {"elt.engine.train"} and layers()[component("elt.engine.train")] > layers()["core"]


def test_help_does_not_import_torch():
    code = ("import sys\nfrom elt.apps.cli import main\n"
            "for argv in (['--help'], ['train', '--help'], ['sample', '--help'], ['evaluate', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
