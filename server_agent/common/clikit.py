"""What both CLIs share: redacted logging, JSON output, and the one place that turns errors
into SPEC §9 exit codes. Light imports only, so `--help` stays instant."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

_NOISY = ("urllib3", "docker", "paramiko", "invoke", "fabric")


def setup_logging(verbose: bool, level: int = logging.INFO) -> None:
    from .redact import REDACTOR

    class Redacting(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return REDACTOR(super().format(record))

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Redacting("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=logging.DEBUG if verbose else level, handlers=[handler])
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def print_json(data: Any) -> None:
    from .redact import REDACTOR

    click.echo(json.dumps(REDACTOR.obj(data), indent=2))


def run(cli: click.Group) -> None:
    """Run a click group; every error leaves with its exit code and a redacted message."""
    from .errors import ObsError
    from .redact import REDACTOR

    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except ObsError as exc:
        click.echo(f"error: {REDACTOR(str(exc))}", err=True)
        sys.exit(int(exc.exit_code))
    except Exception as exc:  # a bug: say so, without leaking secrets through the traceback
        click.echo(f"internal error (a bug, please report): {type(exc).__name__}: "
                   f"{REDACTOR(str(exc))}", err=True)
        logging.getLogger("obs").debug("traceback", exc_info=True)
        sys.exit(1)
    sys.exit(0)
