"""Forward hooks that exist only while a record is being taken, so the steps that record
nothing run the model untouched (the activation and attention probes build on this)."""

from __future__ import annotations

from typing import Any


class HookProbe:
    """Hooks on a list of modules, registered only while armed: a probe costs nothing on the
    steps it does not record. Subclasses say which hook (:meth:`_register`) and what it
    keeps (:meth:`_reset` clears it at each :meth:`arm`)."""

    def __init__(self, modules: list[Any]) -> None:
        self.modules = modules
        self._handles: list[Any] = []
        self._reset()

    @property
    def armed(self) -> bool:
        """Whether the hooks are registered now."""
        return bool(self._handles)

    def arm(self) -> None:
        """Register the hooks (a no-op when already armed)."""
        if self._handles:
            return
        self._reset()
        self._handles = [self._register(i, m) for i, m in enumerate(self.modules)]

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _reset(self) -> None:
        raise NotImplementedError

    def _register(self, i: int, module: Any) -> Any:
        raise NotImplementedError
