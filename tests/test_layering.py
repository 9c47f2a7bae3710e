"""The package's layering (DESIGN.md): serve -> engine -> decode -> model/cache -> ops ->
backends, imports pointing down only, and no import cycle inside tridiff.decode.

Read from the sources with ast (function-level imports included), so a lazy import that
closes a circle is caught too."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "tridiff"

# higher number = higher layer; a module may import only its own layer or lower ones
LAYERS = {"serve": 5, "engine": 4, "decode": 3, "generate": 3, "model": 2, "cache": 2, "layers": 2,
          "ops": 1, "reference": 0, "cpp": 0, "cuda": 0, "triton": 0, "native": 0, "cupy": 0}


def _module(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            for a in node.names:   # "from tridiff.decode import graphs" imports tridiff.decode.graphs
                yield f"{node.module}.{a.name}"


GRAPH = {_module(p): {m for m in _imports(p) if m.startswith("tridiff")} for p in ROOT.rglob("*.py")}


def _layer(mod: str):
    parts = mod.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


@pytest.mark.parametrize("mod", sorted(m for m in GRAPH if _layer(m) is not None))
def test_imports_point_down(mod):
    mine = _layer(mod)
    up = sorted(m for m in GRAPH[mod] if (_layer(m) or -1) > mine and m in GRAPH)
    assert not up, f"{mod} (layer {mine}) imports higher layers: {up}"


def test_decode_has_no_import_cycle():
    decode = {m: {d for d in deps if d.startswith("tridiff.decode.") and d in GRAPH}
              for m, deps in GRAPH.items() if m.startswith("tridiff.decode.")}
    state = {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", "import cycle: " + " -> ".join(path + [m])
        state[m] = "open"
        for d in decode[m]:
            visit(d, path + [m])
        state[m] = "done"

    for m in decode:
        visit(m, [])


def test_the_checker_sees_a_cycle():
    """The cycle check fails on a known cycle (so the test above can fail)."""
    saved = dict(GRAPH)
    try:
        GRAPH["tridiff.decode.graphs"] = GRAPH["tridiff.decode.graphs"] | {"tridiff.decode.strategies"}
        with pytest.raises(AssertionError, match="import cycle"):
            test_decode_has_no_import_cycle()
    finally:
        GRAPH.clear()
        GRAPH.update(saved)
