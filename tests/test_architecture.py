"""The layout rules of docs/architecture.md, checked on the source: no import cycle between llcv's
modules (imports inside functions and type-only imports included, where a cycle would otherwise
hide), other packages import only a package's face and no private name crosses a package, no
``locals()`` in the CLI, no module past about 600 lines without saying at its top why, and no
function past 100 lines of code or 8 parameters without saying why in its docstring."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "llcv"
LONG_MODULE_LINES = 650  # "about 600": a module past this states why at its top
LENGTH_REASON = "Why one module:"
LONG_FUNCTION_LINES = 100  # code lines, docstring left out: a function past this states why in its docstring
FUNCTION_LENGTH_REASON = "Why one function:"
MANY_PARAMETERS = 8  # a function taking more states why in its docstring, or takes a settings object instead
PARAMETERS_REASON = "Why these parameters:"
# Typer commands take one parameter per option group, and their docstrings are their --help.
COMMAND_MODULES = {"llcv.cli"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imported_modules(node: ast.Import | ast.ImportFrom, module: str) -> list[str]:
    """The llcv modules an import statement loads (``from llcv.x import y`` loads llcv.x.y if that is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "llcv"]
    if node.level:  # relative import
        base = module.split(".")[: -node.level] if not MODULES[module].name == "__init__.py" else module.split(".")[: len(module.split(".")) - node.level + 1]
        source = ".".join([*base, node.module] if node.module else base)
    else:
        source = node.module or ""
    if source.split(".")[0] != "llcv":
        return []
    # `from llcv import sampling` loads the submodule; `from llcv import __version__` runs the package.
    submodules = [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in MODULES]
    names_from_source = len(submodules) < len(node.names)
    return [source, *submodules] if names_from_source else submodules


def imports_of(module: str) -> set[str]:
    """The llcv modules ``module`` imports, at its top, inside its functions (an import inside a
    function hides a cycle until the function runs) or under ``if TYPE_CHECKING`` (a type-only
    import is still a dependency a reader follows, and a cycle through one is two modules that
    cannot be understood apart)."""
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.update(_imported_modules(node, module))
    return {name for name in found if name in MODULES and name != module}


def test_no_import_cycle_between_llcv_modules():
    graph = {module: imports_of(module) for module in MODULES}
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                cycle = path[path.index(imported) :] + [imported]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if imported not in state:
                visit(imported)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)


PACKAGES = {module for module, path in MODULES.items() if path.name == "__init__.py" and module != "llcv"}


def package_of(module: str) -> str:
    """The package ``module`` belongs to: its sub-package of llcv, or, for a module directly in
    llcv, the module itself (a package of one)."""
    owners = [package for package in PACKAGES if module == package or module.startswith(package + ".")]
    return max(owners, key=len) if owners else module


def test_other_packages_import_only_a_packages_face():
    """A package's modules are internal: from outside it, only its ``__init__`` is imported, so
    what other code may rely on is the short list there."""
    reaching_in = sorted(
        f"{module} imports {imported}"
        for module in MODULES
        for imported in imports_of(module)
        if package_of(imported) in PACKAGES and imported != package_of(imported) and package_of(module) != package_of(imported)
    )
    assert not reaching_in, "imports past a package's face: " + "; ".join(reaching_in)


def private_imports(module: str, source: str | None = None) -> list[str]:
    """``from llcv.x import _name`` statements of ``module`` (or of ``source`` read as that
    module) whose ``llcv.x`` lies in another package."""
    found = []
    for node in ast.walk(ast.parse(source if source is not None else MODULES[module].read_text())):
        if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("llcv"):
            continue
        for alias in node.names:
            private = alias.name.startswith("_") and not alias.name.startswith("__")
            if private and package_of(node.module) != package_of(module):
                found.append(f"{module} imports {alias.name} from {node.module}")
    return found


def test_no_module_imports_another_packages_private_names():
    crossing = [statement for module in MODULES for statement in private_imports(module)]
    assert not crossing, "private names imported across packages: " + "; ".join(crossing)


def test_the_cli_maps_flags_to_settings_without_locals():
    source = (PACKAGE / "cli.py").read_text()
    calls = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call) and ast.unparse(node.func) == "locals"]
    assert not calls, "cli.py reads its flags through locals(): renaming a parameter would silently drop a flag"


def test_long_modules_say_why_at_their_top():
    unexplained = []
    for module, path in MODULES.items():
        lines = path.read_text().count("\n")
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > LONG_MODULE_LINES and LENGTH_REASON not in docstring:
            unexplained.append(f"{module} ({lines} lines)")
    assert not unexplained, f"modules past {LONG_MODULE_LINES} lines without '{LENGTH_REASON} ...' in their docstring: {unexplained}"


def code_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A function's lines without its docstring: what a reader must hold in mind at once."""
    lines = function.end_lineno - function.lineno + 1
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
        lines -= body[0].end_lineno - body[0].lineno + 1
    return lines


def unexplained_functions(source: str, module: str, size, limit: int, reason: str, unit: str) -> list[str]:
    """The functions of ``source`` whose ``size(function)`` is past ``limit`` and whose docstring
    does not contain ``reason``, as ``module.name (size unit)``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and size(node) > limit and reason not in (ast.get_docstring(node) or ""):
            found.append(f"{module}.{node.name} ({size(node)} {unit})")
    return found


def long_functions(source: str, module: str) -> list[str]:
    """The functions of ``source`` past ``LONG_FUNCTION_LINES`` code lines whose docstring does not say why."""
    return unexplained_functions(source, module, code_lines, LONG_FUNCTION_LINES, FUNCTION_LENGTH_REASON, "lines")


def test_long_functions_say_why_in_their_docstring():
    unexplained = [name for module, path in MODULES.items() for name in long_functions(path.read_text(), module)]
    assert not unexplained, f"functions past {LONG_FUNCTION_LINES} lines without '{FUNCTION_LENGTH_REASON} ...' in their docstring: {unexplained}"


def test_the_function_rule_counts_code_not_docstrings():
    docstring = '    """' + "\n" * 150 + '    """\n'
    long_docstring = "def f():\n" + docstring + "    return 1\n"
    long_body = "def g():\n" + "    x = 1\n" * 101
    explained = 'def h():\n    """Why one function: a table of cases."""\n' + "    x = 1\n" * 101
    assert long_functions(long_docstring, "m") == []
    assert long_functions(long_body, "m") == ["m.g (102 lines)"]
    assert long_functions(explained, "m") == []


def test_the_parser_sees_imports_inside_functions():
    """The rules above would catch what they forbid: the parser sees an import inside a function."""
    tree = ast.parse("def f():\n    from llcv.results import load_results\n")
    node = tree.body[0].body[0]
    assert _imported_modules(node, "llcv.figures.plotting") == ["llcv.results"]
    assert "llcv.settings" in imports_of("llcv.results.store")


def test_the_package_rules_see_what_they_forbid():
    """Reaching into a package and importing a private name are both seen, and a package's own
    modules may use each other's internals."""
    assert package_of("llcv.sampling.chains") == "llcv.sampling"
    assert package_of("llcv.fileio") == "llcv.fileio"
    tree = ast.parse("from llcv.sampling.chains import ChainState\n")
    assert _imported_modules(tree.body[0], "llcv.figures.report") == ["llcv.sampling.chains"]
    assert package_of("llcv.sampling.chains") != package_of("llcv.figures.report")
    reaching = "from llcv.sampling.chains import _ChainGroup, ChainState\nfrom llcv.sampling import __all__\n"
    assert private_imports("llcv.figures.report", reaching) == ["llcv.figures.report imports _ChainGroup from llcv.sampling.chains"]
    assert private_imports("llcv.sampling.estimate", reaching) == []


def parameter_count(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A function's named parameters, ``self`` and ``cls`` left out (``*args``/``**kwargs`` are not named)."""
    arguments = function.args
    return len([a for a in arguments.posonlyargs + arguments.args + arguments.kwonlyargs if a.arg not in ("self", "cls")])


def many_parameter_functions(source: str, module: str) -> list[str]:
    """The functions of ``source`` past ``MANY_PARAMETERS`` parameters whose docstring does not say why."""
    return unexplained_functions(source, module, parameter_count, MANY_PARAMETERS, PARAMETERS_REASON, "parameters")


def test_functions_past_eight_parameters_say_why_in_their_docstring():
    unexplained = [name for module, path in MODULES.items() if module not in COMMAND_MODULES for name in many_parameter_functions(path.read_text(), module)]
    assert not unexplained, f"functions past {MANY_PARAMETERS} parameters without '{PARAMETERS_REASON} ...' in their docstring: {unexplained}"


def test_the_parameter_rule_counts_named_parameters():
    nine = "def f(a, b, c, d, e, f, g, h, *, i):\n    pass\n"
    eight = "def g(self, a, b, c, d, e, f, g, h, *args, **kwargs):\n    pass\n"
    explained = 'def h(a, b, c, d, e, f, g, h, i):\n    """Why these parameters: a reason."""\n'
    assert many_parameter_functions(nine, "m") == ["m.f (9 parameters)"]
    assert many_parameter_functions(eight, "m") == [] and many_parameter_functions(explained, "m") == []
