"""Command-line options generated from the settings dataclasses.

Each settings field is documented once, by ``_doc(...)`` in its dataclass (``HarvestConfig``, ``TrainConfig``,
``EvalConfig``, ...); that text is its ``--help``. A command names the dataclass it exposes and, for the few
fields whose command-line form is not the plain ``--field-name VALUE``, how they differ (a :class:`Form`);
a field left off the command line is listed, with the reason, in ``not_exposed``. ``tests/test_cli_options.py``
checks that every field is exactly one option or deliberately not exposed, and that its help is its doc.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from typing import Annotated, Any, Callable, Optional

import typer

from mtsae.errors import MtsaeError

_NO_DEFAULT = object()
REQUIRED = inspect.Parameter.empty
"""The default of an option that must be given."""


@dataclasses.dataclass(frozen=True)
class Form:
    """How one field appears on the command line, where not as the plain ``--field-name VALUE``."""

    decls: tuple[str, ...] = ()
    """Option names, when not ``--field-name`` (e.g. ``("--config",)`` for ``config_file``)."""
    metavar: str | None = None
    suffix: str = ""
    """Appended to the field's doc, e.g. how a list is typed."""
    argument: bool = False
    """A positional argument instead of an option."""
    comma_example: str | None = None
    """A list typed as one comma-separated text; this example is named in its error line."""
    default: Any = _NO_DEFAULT
    """The command line's default, when not the field's."""


@dataclasses.dataclass(frozen=True)
class ConfigOptions:
    """The options of one settings dataclass: built into a command's signature, read back into field values."""

    config: type
    forms: dict[str, Form] = dataclasses.field(default_factory=dict)
    not_exposed: dict[str, str] = dataclasses.field(default_factory=dict)
    """Fields with no option of their own, each with the reason."""
    unset_defaults: bool = False
    """Every option defaults to None ("not given"), so a config file's value or the field's default applies."""
    help: Callable[[str, str], str] | None = None
    """``(field name, doc) -> help``, for a command that adds to every doc (e.g. the default)."""

    def fields(self) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(self.config) if f.name not in self.not_exposed]

    def doc(self, name: str) -> str:
        return next(f.metadata["help"] for f in dataclasses.fields(self.config) if f.name == name)

    def parameters(self) -> list[inspect.Parameter]:
        hints = typing.get_type_hints(self.config)
        return [self._parameter(f, hints[f.name]) for f in self.fields()]

    def _parameter(self, f: dataclasses.Field, hint: Any) -> inspect.Parameter:
        form = self.forms.get(f.name, Form())
        item = str if form.comma_example is not None else _unwrap_optional(hint)
        default = None if self.unset_defaults else form.default
        if default is _NO_DEFAULT:
            default = _field_default(f)
            if form.comma_example is not None and default is not None:
                default = ",".join(str(value) for value in default)
            elif _is_list(item) and not default:
                default = None  # typer's "not given" for a repeatable option; values() puts the field's back
        if default is None:
            item = Optional[item]
        help_text = self.doc(f.name) + form.suffix
        if self.help is not None:
            help_text = self.help(f.name, help_text)
        kind = typer.Argument if form.argument else typer.Option
        info = kind(*form.decls, help=help_text, **({"metavar": form.metavar} if form.metavar else {}))
        return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                 annotation=Annotated[item, info])

    def values(self, given: dict[str, Any]) -> dict[str, Any]:
        """The fields' values from a command's keyword arguments (removed from ``given``), comma lists parsed."""
        hints = typing.get_type_hints(self.config)
        values = {}
        for f in self.fields():
            value, form = given.pop(f.name), self.forms.get(f.name, Form())
            if form.comma_example is not None and value is not None:
                value = comma_list(value, _list_item(hints[f.name]), option_name(f.name, form), form.comma_example)
            if value is None and _is_list(_unwrap_optional(hints[f.name])) and not self.unset_defaults:
                value = _field_default(f)
            values[f.name] = value
        return values


def option_name(name: str, form: Form | None = None) -> str:
    return form.decls[0] if form is not None and form.decls else f"--{name.replace('_', '-')}"


def comma_list(text: str, item: type, option: str, example: str) -> list:
    """``"5,19"`` -> ``[5, 19]``: empty parts are skipped; a part that is not an ``item`` is one error line."""
    try:
        return [item(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        raise MtsaeError(f"{option} takes comma-separated integers such as {example}, got {text!r}") from None


def with_parameters(*groups: list[inspect.Parameter]):
    """Give a ``**values`` command body the signature typer reads its options from."""

    def decorate(body):
        @functools.wraps(body)
        def command(**values):
            return body(**values)

        parameters = [p for group in groups for p in group]
        command.__signature__ = inspect.Signature(parameters)
        command.__annotations__ = {p.name: p.annotation for p in parameters}
        del command.__wrapped__  # typer must read the signature above, not the body's
        return command

    return decorate


def option(name: str, annotation: Any, default: Any = None, *decls: str, **info: Any) -> inspect.Parameter:
    """One hand-written option (one that belongs to the command, not to a settings dataclass)."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[annotation, typer.Option(*decls, **info)])


def _field_default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


def _unwrap_optional(hint: Any) -> Any:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else hint
    return hint


def _is_list(hint: Any) -> bool:
    return typing.get_origin(hint) in (list, tuple)


def _list_item(hint: Any) -> type:
    return typing.get_args(_unwrap_optional(hint))[0]
