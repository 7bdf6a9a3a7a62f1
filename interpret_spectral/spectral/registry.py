"""A registry of named extension objects (graph kinds, solvers), with entry points.

The paper varies in two places, the affinity graph and the solver; each has one
:class:`Registry`.  Names resolve once, at the public entry points; an object of the
registry's type, or a callable that makes one (a class or a factory function), is
accepted wherever a name is, as scikit-learn accepts ``affinity="rbf"`` or a callable.
Third-party packages add entries through an entry-point group (the entry point's value
is an object or a factory), or by calling ``register``.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Named objects of one type, built-ins first, entry points loaded on first need.

    Parameters
    ----------
    what : str
        What the entries are, for messages (``"graph kind"``).
    base : type
        The type every entry is an instance of; entries have a ``name`` attribute.
    group : str
        The entry-point group third-party packages register in.
    argument : str
        The public argument that takes these names (``"graph"``), for messages.

    Examples
    --------
    >>> class Thing:
    ...     def __init__(self, name): self.name = name
    >>> things = Registry("thing", Thing, "example.things", "thing")
    >>> _ = things.register(Thing("a"))
    >>> things.get("a").name, things.available()
    ('a', ['a'])
    >>> things.get(lambda: Thing("b")).name
    'b'
    """

    def __init__(self, what: str, base: type, group: str, argument: str) -> None:
        self.what = what
        self.base = base
        self.group = group
        self.argument = argument
        self._entries: dict[str, T] = {}
        self._entry_points_loaded = False

    def coerce(self, value: Any) -> T:
        """``value`` itself when it is an entry object, else what calling it returns (checked).

        Examples
        --------
        >>> class Thing:
        ...     name = "t"
        >>> Registry("thing", Thing, "example.things", "thing").coerce(Thing).name
        't'
        """
        if isinstance(value, self.base):
            return value  # type: ignore[return-value]
        if callable(value):
            made = value()
            if isinstance(made, self.base):
                return made  # type: ignore[return-value]
            raise TypeError(
                f"{self.argument}={value!r} is callable but returned {type(made).__name__}, not a "
                f"{self.base.__name__}; pass a {self.base.__name__} instance, its class or a factory returning one"
            )
        raise TypeError(
            f"{self.argument} must be a registered name ({', '.join(self.available())}), a "
            f"{self.base.__name__} or a callable returning one; got {type(value).__name__}"
        )

    def register(self, entry: Any, *, replace: bool = False) -> T:
        """Register ``entry`` (an object or a factory of one) under its ``name``; returns the object.

        A second, different entry under a taken name is refused unless ``replace``.
        """
        obj = self.coerce(entry)
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.what} needs a non-empty string 'name' attribute, got {name!r}")
        existing = self._entries.get(name)
        if existing is not None and existing is not obj and not replace:
            same_class = type(existing) is type(obj) and type(obj).__qualname__ == type(existing).__qualname__
            if not same_class:
                raise ValueError(
                    f"a {self.what} named {name!r} is already registered ({type(existing).__qualname__}); "
                    "pick another name or pass replace=True"
                )
        self._entries[name] = obj
        return obj

    def unregister(self, name: str) -> None:
        """Remove the entry ``name`` (a no-op when absent)."""
        self._entries.pop(name, None)

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        from importlib.metadata import entry_points

        for entry in entry_points(group=self.group):
            if entry.name in self._entries:
                continue
            try:
                obj = self.coerce(entry.load())
            except Exception as error:  # a broken third-party plugin must not break the package
                raise RuntimeError(
                    f"the {self.what} entry point {entry.name!r} ({entry.value}) of group {self.group!r} "
                    f"failed to load: {type(error).__name__}: {error}; fix or uninstall the package providing it"
                ) from error
            if getattr(obj, "name", None) != entry.name:
                obj.name = entry.name  # type: ignore[attr-defined]
            self._entries[entry.name] = obj

    def reload_entry_points(self) -> None:
        """Look the entry-point group up again (after installing a plugin in a running process)."""
        self._entry_points_loaded = False
        self._load_entry_points()

    def available(self) -> list[str]:
        """Every registered name, built-in, registered in code, or from entry points."""
        self._load_entry_points()
        return sorted(self._entries)

    def get(self, value: str | Any) -> T:
        """The entry named ``value``, or ``value`` coerced to an entry (see :meth:`coerce`)."""
        if isinstance(value, str):
            if value not in self._entries:
                self._load_entry_points()
            if value not in self._entries:
                raise ValueError(
                    f"{self.argument} must be one of {tuple(self.available())} (or a {self.base.__name__}), "
                    f"got {value!r}; register new ones with register_{self.what.replace(' ', '_')}() or the "
                    f"entry-point group {self.group!r}"
                )
            return self._entries[value]
        return self.coerce(value)

