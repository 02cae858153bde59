"""What the `popbox` subcommands share: the default configuration path, logging set-up,
the event loop, and the configured backends opened for one run and closed after it.

Every subcommand module imports this one and none imports another, so the command line
has no import cycles; `popbox.cli.main` only assembles the subcommands."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from popbox.config import Config, ConfigError, LogSection

if TYPE_CHECKING:
    from popbox.backends import Backends

DEFAULT_CONFIG = Path("/etc/popbox/popbox.toml")


def setup_logging(section: LogSection) -> None:
    """Logging as `[log]` says; a target that cannot be opened is a configuration error."""
    from popbox import logs

    try:
        logs.setup(section)
    except OSError as exc:
        raise ConfigError(f"log.target {section.target!r}: {exc.strerror or exc}") from None


def use_uvloop() -> None:
    """Run asyncio on uvloop when it is installed (it is optional)."""
    try:
        import uvloop
    except ImportError:
        return
    uvloop.install()


@contextlib.asynccontextmanager
async def opened(config: Config) -> AsyncIterator[Backends]:
    """The configured backends, closed (pools, lock connections) however the block ends."""
    from popbox.backends import build  # the database drivers load only for commands that use them

    backends = build(config)
    try:
        yield backends
    finally:
        await backends.aclose()
