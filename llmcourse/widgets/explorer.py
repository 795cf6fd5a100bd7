"""The base class of every explorer: controls, a status line and a picture, redrawn on each change."""

from __future__ import annotations

import ipywidgets as widgets


class Explorer(widgets.VBox):
    """An ipywidgets box whose `refresh()` recomputes everything from the current controls.

    A subclass builds its controls, a `status` line (`widgets.HTML`) and its picture, passes the
    controls to `watch`, lays them out with `super().__init__(children)` and calls `refresh()`.
    Because every change ends in `refresh()`, setting a control's `.value` in a test, with no kernel
    running, updates the explorer exactly as a click does.
    """

    status: widgets.HTML

    def watch(self, *controls: widgets.Widget) -> None:
        """Redraw whenever one of `controls` changes its value."""
        for control in controls:
            control.observe(self._on_change, names="value")

    @property
    def message(self) -> str:
        """The status line's current text (HTML): what the explorer shows, or why it cannot."""
        return self.status.value

    def _on_change(self, change: dict) -> None:
        self.refresh()

    def refresh(self) -> None:
        raise NotImplementedError
