"""Packaging: pyproject.toml's commands and dependencies, requirements.txt that mirrors them, and the
Space's front matter in README.md.

These tests read files and parse source with ``ast``; apart from the weights registry they import none
of the project's modules, and they install nothing. That the commands really run from a fresh install
is checked by hand (``pip install .`` in a new venv, then ``lipsync --help`` and ``lipsync-score --help``);
the modules behind them are imported for real by the ``python -m lipsync`` / ``python -m syncnet`` tests.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
PACKAGES: list[str] = PYPROJECT["tool"]["setuptools"]["packages"]
APP = ROOT / "app.py"
FIRST_PARTY = {*PACKAGES, APP.stem}

# Import name -> distribution name, for the distributions whose import name differs.
DISTRIBUTION_OF = {
    "cv2": "opencv-python-headless",
    "PIL": "pillow",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
}
# Extras whose packages the installed packages import, only inside ``try: ... except ImportError``
# (the core install works without them; the feature says which extra to install).
LIBRARY_EXTRAS = ("batch",)
# Imported only inside ``try: ... except ImportError``, so no dependency is declared for them; each
# with the reason.
OPTIONAL_IMPORTS = {
    "spaces": "the ZeroGPU decorator, installed by the Space on that hardware; app.py runs without it",
}


def canonical(name: str) -> str:
    """A distribution name as the package index compares them: case- and -/_/. -insensitive."""
    return re.sub(r"[-_.]+", "-", name).lower()


_REQUIREMENT = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*?)\s*(?:;\s*(.*))?")


def requirement_key(text: str) -> tuple[str, str, str, str]:
    """(name, extras, version specifiers, marker) of a requirement, each normalised for comparison."""
    match = _REQUIREMENT.fullmatch(text.strip())
    assert match, f"cannot read the requirement {text!r}"
    name, extras, specifiers, marker = match.groups()

    def sorted_list(part: str | None) -> str:
        return ",".join(sorted(p.strip().lower() for p in (part or "").strip("[]").split(",") if p.strip()))

    return canonical(name), sorted_list(extras), sorted_list(specifiers.replace(" ", "")), (marker or "").strip()


def requirements_file(path: Path) -> list[str]:
    """The requirement lines of a pip requirements file: no comments, no options (``-r``, ``--index-url``)."""
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = re.sub(r"(^|\s)#.*", "", raw).strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def by_name(requirements: list[str], where: str) -> dict[str, str]:
    named: dict[str, str] = {}
    for text in requirements:
        name = requirement_key(text)[0]
        assert name not in named, f"{where} names {name} twice: {named[name]!r} and {text!r}"
        named[name] = text
    return named


def test_requirements_txt_mirrors_pyproject():
    """The Space installs requirements.txt; ``pip install .[app]`` reads pyproject.toml. Same packages, same specs."""
    declared = by_name([*PROJECT["dependencies"], *PROJECT["optional-dependencies"]["app"]],
                       "pyproject.toml (dependencies + the 'app' extra)")
    listed = by_name(requirements_file(ROOT / "requirements.txt"), "requirements.txt")
    differences = [
        f"  {name}: pyproject.toml has {declared.get(name)!r}, requirements.txt has {listed.get(name)!r}"
        for name in sorted(declared.keys() | listed.keys())
        if name not in declared or name not in listed
        or requirement_key(declared[name]) != requirement_key(listed[name])
    ]
    assert not differences, (
        "requirements.txt must list exactly pyproject.toml's dependencies and its 'app' extra, with the same "
        "version specifiers; change both together:\n" + "\n".join(differences))


def test_the_two_commands_are_declared():
    assert PROJECT["scripts"] == {"lipsync": "lipsync.__main__:main", "lipsync-score": "syncnet.__main__:main"}


def _required_parameters(function: ast.FunctionDef) -> list[str]:
    args = function.args
    positional = [*args.posonlyargs, *args.args]
    without_default = positional[: len(positional) - len(args.defaults)]
    keyword_only = [a for a, default in zip(args.kwonlyargs, args.kw_defaults, strict=True) if default is None]
    return [a.arg for a in (*without_default, *keyword_only)]


@pytest.mark.parametrize("command", sorted(PROJECT["scripts"]))
def test_console_script_points_at_a_main_that_needs_no_arguments(command: str):
    """A console script runs ``sys.exit(module.main())``: the module must be in an installed package and
    define ``main`` at top level, callable with no arguments (its int result becomes the exit status)."""
    target = PROJECT["scripts"][command]
    module, _, attribute = target.partition(":")
    parts = module.split(".")
    assert parts[0] in PACKAGES, f"{command} -> {target}: {parts[0]!r} is not one of the installed packages {PACKAGES}"
    for depth in range(1, len(parts)):
        package = ROOT.joinpath(*parts[:depth])
        assert (package / "__init__.py").is_file(), f"{command} -> {target}: {package} is not a package"
    path = ROOT.joinpath(*parts).with_suffix(".py")
    if not path.is_file():
        path = ROOT.joinpath(*parts, "__init__.py")
    assert path.is_file(), f"{command} -> {target}: there is no module {module}"
    functions = {node.name: node for node in ast.parse(path.read_text(encoding="utf-8")).body
                 if isinstance(node, ast.FunctionDef)}
    assert attribute in functions, f"{command} -> {target}: {path.relative_to(ROOT)} defines no function {attribute}"
    required = _required_parameters(functions[attribute])
    assert not required, f"{command} -> {target}: the command calls {attribute}() bare, but it requires {required}"


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(n, ast.Name) and n.id in {"ImportError", "ModuleNotFoundError"} for n in names)


class _Imports(ast.NodeVisitor):
    """Top-level names of a file's absolute imports -> whether every import of that name is guarded by
    ``try: ... except ImportError``."""

    def __init__(self) -> None:
        self.guarded: dict[str, bool] = {}
        self._depth = 0

    def visit_Try(self, node: ast.Try) -> None:
        guard = any(_catches_import_error(h) for h in node.handlers)
        self._depth += guard
        for statement in node.body:
            self.visit(statement)
        self._depth -= guard
        for part in (*node.handlers, *node.orelse, *node.finalbody):
            self.visit(part)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self._add(node.module)

    def _add(self, dotted: str) -> None:
        top = dotted.partition(".")[0]
        self.guarded[top] = self.guarded.get(top, True) and self._depth > 0


@functools.cache
def _imports_of(path: Path) -> dict[str, bool]:
    visitor = _Imports()
    visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return visitor.guarded


def third_party_imports(paths: list[Path]) -> dict[str, dict[str, bool]]:
    """{import name: {file: guarded}} for the imports that are neither the standard library nor ours."""
    found: dict[str, dict[str, bool]] = {}
    for path in paths:
        for name, guarded in _imports_of(path).items():
            if name not in sys.stdlib_module_names and name not in FIRST_PARTY:
                found.setdefault(name, {})[str(path.relative_to(ROOT))] = guarded
    return found


LIBRARY_FILES = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
SCOPES = {
    # what it covers, the files, the dependencies they may use, where a missing one goes
    "library": (LIBRARY_FILES, PROJECT["dependencies"], "[project] dependencies"),
    "app": ([APP], [*PROJECT["dependencies"], *PROJECT["optional-dependencies"]["app"]], "the 'app' extra"),
}


@pytest.mark.parametrize("scope", sorted(SCOPES))
def test_every_third_party_import_has_a_declared_dependency(scope: str):
    files, requirements, where = SCOPES[scope]
    assert files, f"no source files found for {scope}"
    declared = {requirement_key(r)[0] for r in requirements}
    extras = {requirement_key(r)[0] for r in library_extras()} if scope == "library" else set()
    problems = []
    for name, in_files in sorted(third_party_imports(files).items()):
        distribution = canonical(DISTRIBUTION_OF.get(name, name))
        if distribution in declared:
            continue
        unguarded = sorted(f for f, guarded in in_files.items() if not guarded)
        if not unguarded and (name in OPTIONAL_IMPORTS or distribution in extras):
            continue
        if not unguarded:
            problems.append(f"  {name!r} is imported only inside try/except ImportError in {sorted(in_files)}: "
                            f"declare {distribution!r} in {where}, or add {name!r} to OPTIONAL_IMPORTS with the reason")
        else:
            problems.append(f"  {name!r} is imported by {unguarded} but no dependency provides it: add "
                            f"{distribution!r} to {where} in pyproject.toml and to requirements.txt (if its "
                            f"distribution is not called {distribution!r}, map it in DISTRIBUTION_OF)")
    assert not problems, f"undeclared imports in the {scope}:\n" + "\n".join(problems)


def library_extras() -> list[str]:
    return [r for extra in LIBRARY_EXTRAS for r in PROJECT["optional-dependencies"][extra]]


def test_library_extras_are_imported_guarded_and_installed_for_the_tests():
    """The batch commands import ray and pyarrow lazily: each package of the extra is imported by some
    library file, only inside try/except ImportError, and requirements-dev.txt installs it for the tests."""
    found = third_party_imports(LIBRARY_FILES)
    for requirement in library_extras():
        name = requirement_key(requirement)[0]
        files = {f: guarded for module, in_files in found.items()
                 if canonical(DISTRIBUTION_OF.get(module, module)) == name for f, guarded in in_files.items()}
        assert files, f"{requirement!r} is in a library extra but no library file imports it"
        unguarded = sorted(f for f, guarded in files.items() if not guarded)
        assert not unguarded, f"{unguarded} import {name} outside try/except ImportError: the core install lacks it"
    dev = by_name(requirements_file(ROOT / "requirements-dev.txt"), "requirements-dev.txt")
    for requirement in library_extras():
        name = requirement_key(requirement)[0]
        assert name in dev and requirement_key(dev[name]) == requirement_key(requirement), (
            f"requirements-dev.txt must list {requirement!r} as pyproject.toml's extra does (the tests use it)")


@pytest.mark.parametrize("scope", sorted(SCOPES))
def test_every_declared_dependency_is_imported(scope: str):
    """A dependency nothing imports only makes installs bigger (the library's extras are checked above)."""
    files, requirements, _ = SCOPES[scope]
    own = PROJECT["dependencies"] if scope == "library" else PROJECT["optional-dependencies"]["app"]
    imported = {canonical(DISTRIBUTION_OF.get(name, name)) for name in third_party_imports(files)}
    unused = sorted(r for r in own if requirement_key(r)[0] not in imported)
    assert not unused, f"declared for the {scope} but imported by none of its files: {unused}"


def test_optional_imports_are_still_imported():
    found = third_party_imports([*LIBRARY_FILES, APP])
    stale = sorted(name for name in OPTIONAL_IMPORTS if name not in found)
    assert not stale, f"OPTIONAL_IMPORTS names modules nothing imports any more: {stale}"


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    assert match, "README.md must open with the Space's YAML front matter between two --- lines"
    return yaml.safe_load(match.group(1))


def test_front_matter_preloads_exactly_the_registry_checkpoints():
    """Each item is "repo file,file[ revision]" (the Spaces config reference); a file preloaded at another
    revision than the registry's, or one the app does not use, would be downloaded for nothing."""
    from common.weights import REGISTRY

    preloaded: dict[tuple[str, str], str] = {}
    for item in front_matter()["preload_from_hub"]:
        fields = item.split()
        assert len(fields) in (2, 3), (
            f"preload_from_hub item {item!r}: write 'repo file,file' (and a revision if pinned); a repo alone "
            "preloads every file in it")
        repo, files = fields[:2]
        revision = fields[2] if len(fields) == 3 else "main"
        for name in files.split(","):
            assert (repo, name) not in preloaded, f"preload_from_hub names {repo} {name} twice"
            preloaded[repo, name] = revision
    wanted = {(spec.repo_id, spec.filename): spec.revision for spec in REGISTRY.values()}
    assert preloaded == wanted, (
        "preload_from_hub must list common.weights.REGISTRY's files, at its revisions:\n"
        f"  missing: {sorted(wanted.items() - preloaded.items())}\n"
        f"  not in the registry: {sorted(preloaded.items() - wanted.items())}")


def test_front_matter_models_cover_the_registry_repos():
    from common.weights import REGISTRY

    missing = sorted({spec.repo_id for spec in REGISTRY.values()} - set(front_matter()["models"]))
    assert not missing, f"models: in README.md's front matter lacks the weights' Hub repos {missing}"


def test_front_matter_suggests_a_hub_hardware_flavor():
    from huggingface_hub import SpaceHardware

    flavor = front_matter()["suggested_hardware"]
    assert flavor in {h.value for h in SpaceHardware}, f"suggested_hardware {flavor!r} is not a Hub hardware flavor"
