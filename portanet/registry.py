"""One registry per kind of named thing: activations, losses, initializers, optimizers,
layers, metrics and schedules.

A :class:`Registry` maps a name to a *factory*, a callable that builds the object
from keyword parameters. Everything that turns a name into an object reads the
same registry: ``get`` in each module, ``from_config``, the checkpoint reader
and the command line's ``choices``. So registering a name once makes it work
everywhere a built-in name does.

A spec is a name (``"elu"``) or a config dict (``{"name": "elu", "alpha": 0.5}``);
layers use the key ``"type"`` (``{"type": "Dense", ...}``), as their configs do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")
Factory = Callable[..., Any]


class Registry(Generic[T]):
    """Names of one kind of object, each bound to the factory that builds it.

    Parameters
    ----------
    kind : str
        What is registered, for messages: ``"activation"``.
    plural : str, optional
        Its plural (default ``kind + "s"``).
    key : str
        The config key that holds the name (``"name"``; layers use ``"type"``).
    case_sensitive : bool
        Whether ``"Adam"`` and ``"adam"`` are different names.

    Examples
    --------
    >>> shapes = Registry("shape")
    >>> @shapes.register("square")
    ... def square(side=1.0):
    ...     return ("square", side)
    >>> shapes.create({"name": "square", "side": 2.0})
    ('square', 2.0)
    """

    def __init__(self, kind: str, plural: str | None = None, *, key: str = "name",
                 case_sensitive: bool = True):
        self.kind, self.plural, self.key = kind, plural or kind + "s", key
        self._case_sensitive = case_sensitive
        self._factories: dict[str, Factory] = {}
        self._aliases: dict[str, str] = {}

    def _norm(self, name: str) -> str:
        return name if self._case_sensitive else name.lower()

    def register(self, name: str, factory: Factory | None = None, *,
                 aliases: Iterable[str] = (), replace: bool = False) -> Any:
        """Bind ``name`` (and ``aliases``) to ``factory``; returns ``factory``.

        Used as ``@registry.register("name")`` it decorates the factory. A name
        that is taken raises ``ValueError`` unless ``replace=True``.
        """
        if factory is None:
            return lambda f: self.register(name, f, aliases=aliases, replace=replace)
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty str, got {name!r}")
        if not callable(factory):
            raise TypeError(f"the factory of {self.kind} {name!r} must be callable")
        names = [self._norm(name), *(self._norm(a) for a in aliases)]
        taken = [n for n in names if n in self._factories or n in self._aliases]
        if taken and not replace:
            raise ValueError(f"{self.kind} {taken[0]!r} is already registered; "
                             "pass replace=True to rebind it")
        self._factories[names[0]] = factory
        for alias in names[1:]:
            self._aliases[alias] = names[0]
        return factory

    def names(self) -> list[str]:
        """The registered names, sorted, without aliases (what the CLI offers)."""
        return sorted(self._factories)

    def canonical(self, name: str) -> str:
        """The registered name that ``name`` (perhaps an alias) stands for; KeyError if none."""
        n = self._norm(name)
        n = self._aliases.get(n, n)
        if n not in self._factories:
            raise KeyError(name)
        return n

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self.canonical(name)
        except KeyError:
            return False
        return True

    def __getitem__(self, name: str) -> Factory:
        """The factory registered under ``name`` (or an alias of it)."""
        return self._factories[self.canonical(name)]

    def create(self, spec: str | Mapping[str, Any], *args: Any, **kwargs: Any) -> T:
        """Build an object from ``"name"`` or ``{key: "name", **params}``.

        Extra ``args`` and ``kwargs`` go to the factory after the spec's own
        parameters. An unknown name or bad parameters raise ``ValueError`` that
        names the kind and lists the known names.
        """
        if isinstance(spec, Mapping):
            params = dict(spec)
            name = params.pop(self.key, None)
        else:
            name, params = spec, {}
        if name not in self:
            raise ValueError(f"unknown {self.kind} {spec!r}; known {self.plural} are "
                             f"{', '.join(self.names())}")
        try:
            return self[name](*args, **params, **kwargs)
        except TypeError as exc:
            raise ValueError(f"bad parameters for {self.kind} {name!r}: {exc}") from exc

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
