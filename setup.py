"""Build hook: the wheel installs one import package, ``fedsilo``.

In the repository ``flows``, ``tasks``, ``connectors`` and ``datasets`` are
top-level packages (the checkout is an application run from its root, and an
editable install puts the root on ``sys.path``). A wheel must not install those
names at the top level, where they would shadow other distributions (Hugging
Face's ``datasets``), so its build moves them under ``fedsilo/`` and rewrites
their import statements to match (docs/packaging.md).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

APP_PACKAGES = ("flows", "tasks", "connectors", "datasets")
_NAMES = "|".join(APP_PACKAGES)
_IMPORT = re.compile(
    r"^(?P<lead>[ \t]*(?:from|import)[ \t]+)(?P<name>" + _NAMES + r")\b", re.M
)


def rewrite_imports(text: str) -> str:
    """Return ``text`` with import statements of the app packages under fedsilo."""
    return _IMPORT.sub(lambda m: f"{m['lead']}fedsilo.{m['name']}", text)


class BuildUnderFedsilo(build_py):
    """build_py that nests the app packages in ``fedsilo`` (wheels only)."""

    def run(self) -> None:
        """Build as usual, then move the app packages and rewrite their imports."""
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install uses the checkout as it is
        root = Path(self.build_lib)
        for name in APP_PACKAGES:
            source = root / name
            if source.is_dir():
                target = root / "fedsilo" / name
                if target.exists():
                    shutil.rmtree(target)
                shutil.move(str(source), str(target))
        for path in (root / "fedsilo").rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            new = rewrite_imports(text)
            if new != text:
                path.write_text(new, encoding="utf-8")


# py.typed (PEP 561) and the package's stub of its lazily given names ship in the
# wheel, so type checkers read fedsilo's annotations.
setup(
    cmdclass={"build_py": BuildUnderFedsilo},
    package_data={"fedsilo": ["py.typed", "__init__.pyi"]},
)
