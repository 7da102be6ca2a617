"""The package's shape, checked from its source: no import cycle between its modules, no module
importing another's private names, and long modules saying why at their top."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "torchbridge"
#: Modules past this many lines state why at the top of their docstring ("Long because ...").
LONG_MODULE_LINES = 550


def _modules() -> dict[str, ast.Module]:
    return {f"torchbridge.{p.stem}": ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.glob("*.py"))}


def _imports(tree: ast.Module, modules: dict[str, ast.Module]):
    """(imported module, imported name or None) for every torchbridge import, lazy ones included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "torchbridge":
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in modules or alias.name == "_C":
                    yield submodule, None
                else:
                    yield node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "torchbridge":
                    yield alias.name, None


def test_no_import_cycle():
    modules = _modules()
    graph = {
        name: {target for target, _ in _imports(tree, modules) if target in modules and target != name}
        for name, tree in modules.items()
        if name != "torchbridge.__init__"
    }
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph.get(name, ())):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target] if target in path else [name, target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if not state.get(target):
                visit(target, path + [target])
        state[name] = 2

    for name in graph:
        if not state.get(name):
            visit(name, [name])


def test_no_private_names_across_modules():
    modules = _modules()
    offences = [
        f"{name} imports {target}.{imported}"
        for name, tree in modules.items()
        for target, imported in _imports(tree, modules)
        if imported and imported.startswith("_") and not imported.startswith("__")
    ]
    assert not offences, offences


def test_long_modules_say_why():
    unexplained = []
    for path in sorted(PACKAGE.glob("*.py")):
        lines = path.read_text().count("\n")
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > LONG_MODULE_LINES and "Long because" not in docstring:
            unexplained.append(f"{path.name} ({lines} lines)")
    assert not unexplained, f"modules over {LONG_MODULE_LINES} lines without 'Long because' at the top: {unexplained}"


def test_runtime_imports_light(cnn_artifact):
    """A process that only runs artifacts loads neither Lightning nor scikit-learn."""
    probe = (
        "import sys, torch, torchbridge as tb\n"
        "tb.Runtime(sys.argv[1])(torch.rand(2, 1, 8, 8))\n"
        "print(sorted(m for m in ('lightning', 'sklearn') if m in sys.modules))"
    )
    command = [sys.executable, "-c", probe, str(cnn_artifact[1])]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_lazy_names_are_the_functions():
    """torchbridge.train, .prune, .quantize and .bench stay the functions when their modules load later."""
    probe = (
        "import torchbridge as tb\n"
        "import torchbridge.prune, torchbridge.train, torchbridge.quantize, torchbridge.bench\n"
        "print([callable(f) and f.__name__ for f in (tb.prune, tb.train, tb.quantize, tb.bench)])"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "['prune', 'train', 'quantize', 'bench']", out.stdout


def _stub_names(body) -> set[str]:
    names = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_native_stub_matches_the_module():
    """_C.pyi names what the native module has, no more and no less, class members included."""
    from torchbridge import _C

    stub = ast.parse((PACKAGE / "_C.pyi").read_text())

    def public(names) -> set[str]:
        return {n for n in names if not n.startswith("_") or n in ("__enter__", "__exit__", "__copy__")}

    assert public(_stub_names(stub.body)) == public(dir(_C))
    for node in stub.body:
        if isinstance(node, ast.ClassDef) and node.name != "Error":
            native = getattr(_C, node.name)
            assert public(_stub_names(node.body)) == public(dir(native)) - public(dir(object)), node.name


def test_runtime_options_have_one_source_of_defaults():
    """The Python options are the C++ struct: its defaults, every field settable by keyword, unknown
    names refused, and the CLI's --threads default is the library's."""
    import pytest

    from torchbridge.cli import build_parser
    from torchbridge.runtime import OPTION_NAMES, RuntimeOptions, runtime_options

    defaults = RuntimeOptions()
    assert set(OPTION_NAMES) == {
        "device", "threads", "warmup_runs", "warmup_batches", "optimize", "fuse", "cuda_graphs", "precision",
        "reuse_memory", "max_input_bytes",
    }  # fmt: skip
    built = runtime_options(threads=None, fuse=False, warmup_batches=(4, 8))
    assert (built.threads, built.fuse, built.warmup_batches) == (defaults.threads, False, [4, 8])
    assert runtime_options(built, device="cpu").warmup_batches == [4, 8] and built.device == defaults.device
    with pytest.raises(TypeError, match="unknown runtime option 'thread'"):
        runtime_options(thread=2)
    for command in ("pipeline", "verify", "bench", "prune", "quantize"):
        extra = {"verify": ["a.pt"], "quantize": ["--out", "q.pt"]}.get(command, [])
        assert build_parser().parse_args([command, *extra]).threads == defaults.threads, command
