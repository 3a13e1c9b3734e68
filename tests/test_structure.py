"""The shape of the tree a newcomer relies on: no import circle between the project's modules, no private
name imported across modules, and the run-directory contract free of torch."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("trainer", "dashboard", "bench")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports() -> dict[str, list[tuple[str, list[str]]]]:
    """Per module, what it imports from the project: (module, names), relative imports resolved."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = module_name(path)
            is_package = path.name == "__init__.py"
            imports = []
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom):
                    if node.level:
                        base = name.split(".") if is_package else name.split(".")[:-1]
                        base = base[:len(base) - node.level + 1]
                        target = ".".join(base + ([node.module] if node.module else []))
                    else:
                        target = node.module or ""
                    if target.split(".")[0] in PACKAGES:
                        imports.append((target, [a.name for a in node.names]))
                elif isinstance(node, ast.Import):
                    imports += [(a.name, []) for a in node.names if a.name.split(".")[0] in PACKAGES]
            found[name] = imports
    return found


def resolve(target: str, names: list[str], modules: set[str]) -> list[str]:
    """The project modules an import statement loads (``from pkg import mod`` loads ``pkg.mod``)."""
    loaded = [target] if target in modules else []
    loaded += [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
    return loaded


def test_no_import_circle_between_the_projects_modules():
    imports = project_imports()
    modules = set(imports)
    graph = {m: {t for target, names in imports[m] for t in resolve(target, names, modules)
                 if t != m and not m.startswith(t + ".")} for m in modules}  # a package's own __init__ aside
    state: dict[str, int] = {}
    circles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                circles.append(path[path.index(n):] + [n] if n in path else [m, n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m, [m])
    assert not circles, f"import circles: {circles}"


def test_no_private_name_is_imported_across_modules():
    crossing = [(m, target, n) for m, imports in project_imports().items() for target, names in imports
                for n in names if n.startswith("_") and not n.startswith("__")]
    assert not crossing, crossing


def test_the_run_directory_contract_imports_no_torch():
    for path in (ROOT / "trainer" / "protocol").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and not node.level}
        assert not imported & {"torch", "torchvision", "timm", "streamlit"}, path.name
