"""The shell's node base class: configshell-fb's ConfigNode, made cheap to build in bulk.

configshell's own constructor scans every sibling for a duplicate name and registers ~17
parameter definitions per node. For a tree with 1,000 LUNs and 1,000 storage objects that is
quadratic and costs most of a second, so our nodes share one parameter table per class and rely
on the model for name uniqueness. Everything else (grammar, `ls` drawing, `cd`, `help`,
completion, `get`/`set`) is configshell's, so the shell looks and behaves like targetcli.
"""

from __future__ import annotations

from typing import Any, ClassVar

from configshell import ConfigNode, ExecutionError

from vhostscsi.config.errors import ConfigError
from vhostscsi.shell.session import Session

# (name, type, description) of the 'global' group, as in configshell/targetcli.
GLOBAL_PARAMS: tuple[tuple[str, str, str], ...] = (
    ("tree_round_nodes", "bool", "Tree node display style."),
    ("tree_status_mode", "bool", "Whether or not to display status in tree."),
    ("tree_max_depth", "number", "Maximum depth of displayed node tree."),
    ("tree_show_root", "bool", "Whether or not to display tree root."),
    ("color_mode", "bool", "Console color display mode."),
    ("loglevel_console", "loglevel", "Log level for messages going to the console."),
    ("prompt_length", "number", "Max length of the shell prompt path, 0 for infinite."),
    ("auto_save_on_exit", "bool", "If true, saves configuration on exit."),
    ("auto_save_on_change", "bool", "If true, saves after every change (a running daemon applies it at once)."),
)


def parse_bool(node: ConfigNode, value: str | None, default: bool) -> bool:
    """targetcli's boolean parameters: true/false/yes/no/1/0, case-insensitive."""
    if value is None:
        return default
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ExecutionError(f"invalid boolean {value!r}: use true or false")


class Node(ConfigNode):
    """A tree node bound to the session; subclasses add ``ui_command_*`` methods and summaries."""

    # group -> param -> [type, description, writable]; extended by subclasses.
    extra_groups: ClassVar[dict[str, dict[str, list[Any]]]] = {}
    _tables: ClassVar[dict[type, dict[str, dict[str, list[Any]]]]] = {}

    def __init__(self, name: str, parent: Node | None, shell: Any = None) -> None:
        self._name = name
        self._children = set()
        if parent is None:
            self._parent = None
            self._shell = shell
            shell.attach_root_node(self)
            if shell.prefs["bookmarks"] is None:
                shell.prefs["bookmarks"] = {}
        else:
            self._parent = parent
            self._shell = None
            parent._children.add(self)
        self._configuration_groups = self._table()

    @classmethod
    def _table(cls) -> dict[str, dict[str, list[Any]]]:
        table = Node._tables.get(cls)
        if table is None:
            table = {"global": {n: [t, d, True] for n, t, d in GLOBAL_PARAMS}}
            for group, params in cls.extra_groups.items():
                table[group] = {k: list(v) for k, v in params.items()}
            Node._tables[cls] = table
        return table

    @property
    def session(self) -> Session:
        """The session held by the root node."""
        return self.get_root().session_obj

    def get_root(self) -> Node:  # iterative: deep trees, many calls during `ls`
        node = self
        while node._parent is not None:
            node = node._parent
        return node

    def clear_children(self) -> None:
        """Drop all children before rebuilding them from the model."""
        self._children = set()

    def execute_command(self, command: str, pparams: list[str] = [], kparams: dict[str, str] = {}):  # noqa: B006
        """Run a command, turning model errors into the shell's one-line errors."""
        try:
            return super().execute_command(command, pparams, kparams)
        except ConfigError as exc:
            raise ExecutionError(str(exc)) from None

    def info(self, message: str) -> None:
        """An info line, as targetcli prints it."""
        self.shell.log.info(message)

    def ui_command_status(self) -> None:
        """Displays the current node's status summary."""
        description, _ = self.summary()
        self.info(f"Status for {self.path}: {description}")
