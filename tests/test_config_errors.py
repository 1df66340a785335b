"""Config errors all at once (design.md §2.2): one pass reports every error, each naming the
file, the YAML path and the value, with a hint ("did you mean ..." for unknown keys)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import Field

from dcr_sidecar.config import Problem, _Model, parse_settings
from dcr_sidecar.errors import ConfigError

SOURCE = "c.yaml"
FOUR_MISTAKES = """\
version: 1
listen:
  port: eighty
upstreams:
  - name: acme
    issuer: ${ACME_ISSUER}
    redirect_uris: [http://127.0.0.1:3000/callback]
    scops: [openid]
  - name: beta
    redirect_uris: [http://127.0.0.1:3001/callback]
"""


def errors_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_settings(text, SOURCE, env={} if env is None else env)
    lines = str(info.value).splitlines()
    assert lines[0].startswith(f"{SOURCE}: invalid configuration"), lines
    assert all(line.startswith(f"  {SOURCE}: ") for line in lines[1:]), lines
    return [line.strip() for line in lines[1:]]


def one(lines: list[str], path: str) -> str:
    found = [line for line in lines if line.startswith(f"{SOURCE}: {path}: ")]
    assert len(found) == 1, (path, lines)
    return found[0]


def test_four_independent_mistakes_are_reported_in_one_pass() -> None:
    """A typo'd key, a wrong type, a missing variable and a missing required key, together."""
    lines = errors_of(FOUR_MISTAKES)
    assert len(lines) == 4, lines
    assert "did you mean scopes?" in one(lines, "upstreams[0].scops")
    assert "'eighty'" in one(lines, "listen.port")
    assert "ACME_ISSUER is not set" in one(lines, "upstreams[0].issuer")
    assert "one source is required" in one(lines, "upstreams[1]")


def test_check_config_prints_the_four_mistakes_and_exits_2(tmp_path: Path) -> None:
    """The acceptance run: `check-config` lists all four and exits 2."""
    path = tmp_path / "c.yaml"
    path.write_text(FOUR_MISTAKES)
    result = subprocess.run(
        [sys.executable, "-m", "dcr_sidecar", "check-config", "--config", str(path)],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"}, check=False)
    assert result.returncode == 2, result.stderr
    assert "(4 errors)" in result.stderr
    assert "did you mean scopes?" in result.stderr
    assert "Traceback" not in result.stderr
    print(result.stderr)


def test_an_unknown_key_does_not_hide_the_upstreams_other_errors() -> None:
    """The typo and the cross-key error it causes (no redirect_uris) come together."""
    lines = errors_of("""\
version: 1
upstreams:
  - name: acme
    issuer: https://as.example
    redirect_uri: [https://app.example/cb]
""")
    assert "did you mean redirect_uris?" in one(lines, "upstreams[0].redirect_uri")
    assert "must list the app's redirect URIs" in one(lines, "upstreams[0].redirect_uris")


def test_a_missing_variable_is_one_error_among_the_rest() -> None:
    lines = errors_of("""\
version: 1
log: {level: loud}
upstreams:
  - name: acme
    issuer: https://as.example
    redirect_uris: ["${APP_URL}/cb"]
    client_secret: ${SECRET}
""")
    assert "export APP_URL=" in one(lines, "upstreams[0].redirect_uris[0]")
    secret = one(lines, "upstreams[0].client_secret")
    assert "SECRET is not set" in secret
    assert "${SECRET}" not in secret.split("(got")[1]  # secret paths never echo a value
    assert "use one of the values listed" in one(lines, "log.level")


@pytest.mark.parametrize(("typo", "suggestion"), [
    ("upstream", "upstreams"), ("listn", "listen"), ("shutdwn", "shutdown")])
def test_top_level_typos_get_a_suggestion(typo: str, suggestion: str) -> None:
    lines = errors_of(f"version: 1\n{typo}: {{}}\n")
    assert f"did you mean {suggestion}?" in one(lines, typo)


def test_an_unknown_key_with_nothing_close_lists_the_known_keys() -> None:
    line = one(errors_of("version: 1\nlisten: {zzz: 1}\n"), "listen.zzz")
    assert "the keys here are: host, port" in line


@pytest.mark.parametrize("key", ["token_endpoint_auth_methods", "client_profile",
                                 "initial_access_token", "generation_grace"])
def test_dcr_only_keys_on_a_static_client_are_errors_saying_why(key: str) -> None:
    value = {"token_endpoint_auth_methods": "[none]", "client_profile": "public",
             "initial_access_token": "iat", "generation_grace": "60"}[key]
    line = one(errors_of(f"""\
version: 1
upstreams:
  - name: acme
    issuer: https://as.example
    redirect_uris: [https://app.example/cb]
    client_id: fixed
    {key}: {value}
"""), f"upstreams[0].{key}")
    assert "does nothing for a static client" in line
    assert "remove client_id to register by DCR" in line


def test_client_secret_without_client_id_hints_to_add_client_id() -> None:
    line = one(errors_of("""\
version: 1
upstreams:
  - name: acme
    issuer: https://as.example
    redirect_uris: [https://app.example/cb]
    client_secret: s3cret
"""), "upstreams[0].client_secret")
    assert "is for static clients only" in line
    assert "add client_id" in line
    assert "s3cret" not in line


def test_a_wrong_typed_key_does_not_invent_errors_from_its_default() -> None:
    """client_id: [] fails; the DCR checks that its absence would trigger are not reported."""
    lines = errors_of("""\
version: 1
upstreams:
  - name: acme
    issuer: https://as.example
    redirect_uris: [https://app.example/cb]
    client_id: [a]
    client_secret: s
""")
    assert len(lines) == 1, lines
    one(lines, "upstreams[0].client_id")


def test_settings_checks_still_run_beside_a_broken_upstream() -> None:
    """upstreams[0] is broken; upstreams[1]'s http issuer is still reported at its own index."""
    lines = errors_of("""\
version: 1
upstreams:
  - name: Bad Name
    issuer: https://as.example
    redirect_uris: [https://app.example/cb]
  - name: good
    issuer: http://as.example
    redirect_uris: [https://app.example/cb]
""")
    assert len(lines) == 2, lines
    one(lines, "upstreams[0].name")
    assert "security.allow_http" in one(lines, "upstreams[1].issuer")


def test_the_machinery_works_for_any_model_field() -> None:
    """A model added later gets paths, did-you-mean and cross-key checks without new code."""

    class Knob(_Model):
        speed: int = Field(default=1, ge=1)
        direction: str = "up"

        def _problems(self) -> Iterator[Problem]:
            if self.direction == "down" and self.speed > 5:
                yield Problem(("speed",), "too fast going down", "slow down",
                              involves=("direction",))

    class Machine(_Model):
        knobs: list[Knob] = Field(default_factory=list)

    from pydantic import ValidationError

    from dcr_sidecar.config import _problems_in

    raw = {"knobs": [{"sped": 2}, {"speed": 9, "direction": "down"}, {"speed": 0}]}
    with pytest.raises(ValidationError) as info:
        Machine.model_validate(raw)
    found = {(p.path, p.message, p.hint) for p in _problems_in(info.value, raw)}
    assert found == {
        (("knobs", 0, "sped"), "unknown key", "did you mean speed?"),
        (("knobs", 1, "speed"), "too fast going down", "slow down"),
        (("knobs", 2, "speed"), "Input should be greater than or equal to 1", "use a larger value"),
    }


def test_a_missing_required_key_says_so_with_a_hint() -> None:
    line = one(errors_of("""\
version: 1
upstreams:
  - issuer: https://as.example
    redirect_uris: [https://app.example/cb]
"""), "upstreams[0].name")
    assert "required key is missing (got null) — this key is required here; add it" in line
