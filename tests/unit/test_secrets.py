"""Secrets from CI (--secrets-stdin, .env updates) and obsdeploy's --secret: the pure parts."""

from __future__ import annotations

from pathlib import Path

import pytest
from dotenv import dotenv_values

from deploy_tool.remote import AgentCall, read_secrets
from server_agent.common.errors import UsageError
from server_agent.common.redact import REDACTOR
from server_agent.secrets import check_dotenv_safe, parse_secret_lines, updated_dotenv


def test_stdin_lines_are_parsed_and_masked() -> None:
    got = parse_secret_lines("KIS_API_KEY=k-rotated-1\n\nKIS_API_SECRET=a=b c\n", where="stdin")
    assert got == {"KIS_API_KEY": "k-rotated-1", "KIS_API_SECRET": "a=b c"}
    assert REDACTOR("key k-rotated-1") == "key ***"


@pytest.mark.parametrize("text", ["no-equals-sign-here", "1BAD=x", "EMPTY="])
def test_a_bad_stdin_line_is_refused_without_showing_it(text: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_secret_lines(f"OK=fine\n{text}\n", where="stdin")
    assert "line 2" in str(exc.value) or "EMPTY is empty" in str(exc.value)
    assert "no-equals-sign-here" not in str(exc.value)


VALUES = ["plain", "with space", "quote'd", "back\\slash", "dollar$HOME$X{", "hash # not",
          'double"q', "=lead", "  padded  "]


@pytest.mark.parametrize("value", VALUES)
def test_updated_dotenv_round_trips_through_python_dotenv(tmp_path: Path, value: str) -> None:
    env = tmp_path / ".env"
    env.write_text(updated_dotenv("", {"KEY": value}))
    assert dotenv_values(env) == {"KEY": value}


def test_updated_dotenv_keeps_other_lines_and_their_order() -> None:
    current = "# observer\nA=1\nKIS_API_KEY=old\nexport B=2\nKIS_API_KEY=older-dup\n"
    new = updated_dotenv(current, {"KIS_API_KEY": "new-key", "C": "3"})
    assert new == "# observer\nA=1\nKIS_API_KEY=new-key\nexport B=2\nKIS_API_KEY=new-key\nC=3\n"


def test_obsdeploy_reads_every_secret_or_names_all_that_are_missing() -> None:
    env = {"KIS_API_KEY": "value-1", "EMPTY": ""}
    with pytest.raises(UsageError) as exc:
        read_secrets(["KIS_API_KEY", "EMPTY", "ABSENT"], env)
    assert "EMPTY, ABSENT" in str(exc.value) and "value-1" not in str(exc.value)
    for unfit in ("two\nlines", "ab${HOME}"):
        with pytest.raises(UsageError, match="line break") as exc:
            read_secrets(["K"], {"K": unfit})
        assert unfit not in str(exc.value)
    with pytest.raises(UsageError, match="KIS_API_KEY"):
        check_dotenv_safe({"KIS_API_KEY": "x${Y}"}, where="--secrets-stdin")
    assert read_secrets(["KIS_API_KEY", "KIS_API_KEY"], env) == {"KIS_API_KEY": "value-1"}


def test_the_agent_call_never_shows_its_secrets() -> None:
    call = AgentCall(secrets={"KIS_API_KEY": "s3cr3t-value"})
    assert "s3cr3t-value" not in repr(call) and "s3cr3t-value" not in str(call.model_dump())
    assert "s3cr3t-value" not in call.command("deploy", "--secrets-stdin", "v1.0.0")
    assert call.stdin() == "KIS_API_KEY=s3cr3t-value\n"
    assert AgentCall().stdin() is None
