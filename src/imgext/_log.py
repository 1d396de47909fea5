"""Logging for the CLI: one `imgext` logger, each record tagged with its phase."""

from __future__ import annotations

import logging
import sys
import time

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


class _PhaseFormatter(logging.Formatter):
    """`2026-12-03T13:40:00Z WARN  [extend run] message`, no control characters."""

    def format(self, record: logging.LogRecord) -> str:
        phase = getattr(record, "phase", None)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
        level = {"WARNING": "WARN"}.get(record.levelname, record.levelname)
        where = f"[{phase}] " if phase else ""
        return f"{stamp} {level:<5} {where}{record.getMessage()}"


def configure(level: str) -> None:
    logger = logging.getLogger("imgext")
    logger.setLevel(LEVELS[level])
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PhaseFormatter())
    logger.addHandler(handler)
    logger.propagate = False
