"""YAML documents memplan reads and writes (profiles, plans, priors, device profiles): one way to
dump them, parse them and read them, with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def dump_yaml(data: Any, header: str) -> str:
    """``data`` as YAML in its own key order, short lists in flow style, after a ``# header`` line."""
    body = yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=4096)
    return f"# {header}\n{body}"


def parse_yaml(text: str, where: str, error: type[Exception]) -> Any:
    """Parse YAML text; a syntax error becomes one ``error(f"{where}: not valid YAML: ...")``."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as problem:
        raise error(f"{where}: not valid YAML: {' '.join(str(problem).split())}") from None


def read_text(path: str | Path, error: type[Exception]) -> str:
    """A file's text; an unreadable file becomes one ``error(f"{path}: cannot read: ...")``."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as problem:
        reason = getattr(problem, "strerror", None) or problem
        raise error(f"{path}: cannot read: {reason}") from None


def bundled_names(folder: str) -> list[str]:
    """Names of the YAML files bundled in ``memplan.profiles/<folder>``, without ``.yaml``, sorted."""
    from importlib import resources

    files = resources.files("memplan.profiles") / folder
    return sorted(item.name.removesuffix(".yaml") for item in files.iterdir() if item.name.endswith(".yaml"))


def bundled_text(folder: str, name: str) -> str | None:
    """The text of ``memplan.profiles/<folder>/<name>.yaml``, or None when there is no such file."""
    from importlib import resources

    resource = resources.files("memplan.profiles") / folder / f"{name}.yaml"
    return resource.read_text(encoding="utf-8") if resource.is_file() else None


class YamlDocument:
    """Mixin for a document class with ``to_dict``/``from_dict``: YAML text and files for it.

    Subclasses set ``document_name`` (used in error messages), ``error`` (the exception type their
    ``from_dict`` raises) and implement :meth:`yaml_header`.
    """

    document_name = "document"
    error: type[Exception] = ValueError

    def yaml_header(self) -> str:
        """The comment line written above the document."""
        raise NotImplementedError

    def to_yaml(self) -> str:
        """YAML text: the header comment, then the document in its own key order."""
        return dump_yaml(self.to_dict(), self.yaml_header())  # type: ignore[attr-defined]

    @classmethod
    def from_yaml(cls, text: str, where: str | None = None):  # type: ignore[no-untyped-def]
        """Parse and check YAML text; errors start with ``where`` (the file, or the document's name)."""
        where = where or cls.document_name
        data = parse_yaml(text, where, cls.error)
        try:
            return cls.from_dict(data)  # type: ignore[attr-defined]
        except cls.error as problem:
            raise cls.error(f"{where}: {problem}") from None

    def save(self, path: str | Path) -> Path:
        """Write the document atomically to ``path``; return the path."""
        from memplan.fileio import atomic_write_text

        return atomic_write_text(path, self.to_yaml())

    @classmethod
    def load(cls, path: str | Path):  # type: ignore[no-untyped-def]
        """Read and check a document file."""
        return cls.from_yaml(read_text(path, cls.error), where=str(path))
