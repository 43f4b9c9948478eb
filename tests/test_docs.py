"""The documentation covers every option, with the defaults the code really has, and its links resolve."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from wsgi_dbsession import ConfigurationError, SessionMiddleware
from wsgi_dbsession.options import option_defaults

DOCS = Path(__file__).resolve().parent.parent / "docs"
CONFIGURATION = (DOCS / "configuration.md").read_text()
DEFAULTS = option_defaults()
# "| `name` | type | default | unit | what it does |" rows of the summary table.
ROWS = {
    match.group(1): [cell.strip() for cell in match.group(2).split("|")]
    for match in re.finditer(r"^\| `(\w+)` \|(.*)\|$", CONFIGURATION, re.MULTILINE)
}
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def no_app(environ: object, start_response: object) -> list[bytes]:
    return []


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_every_option_is_in_the_configuration_reference(name: str) -> None:
    assert name in ROWS, f"add `{name}` to the summary table of docs/configuration.md"
    assert f"### `{name}`" in CONFIGURATION, f"add a `### `{name}`` section to docs/configuration.md"
    assert f"`dbsession.{name}`" in CONFIGURATION, f"list `dbsession.{name}` among the Pyramid setting names"


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_each_documented_default_is_the_real_default(name: str) -> None:
    documented = ROWS[name][1]
    default = DEFAULTS[name]
    if documented == "required":
        with pytest.raises(ConfigurationError, match=f"{name} is required"):
            SessionMiddleware(no_app)
        return
    assert documented.startswith("`") and documented.endswith("`"), documented
    assert ast.literal_eval(documented.strip("`")) == default


def test_every_summary_row_is_a_real_option() -> None:
    assert sorted(ROWS) == sorted(DEFAULTS)


def test_every_doc_is_in_the_index() -> None:
    index = (DOCS / "index.md").read_text()
    linked = set(LINK.findall(index))
    missing = sorted(
        path.name for path in DOCS.glob("*.md") if path.name != "index.md" and path.name not in linked
    )
    assert missing == [], f"docs/index.md does not link {missing}"


@pytest.mark.parametrize("page", sorted(path.name for path in DOCS.glob("*.md")))
def test_relative_links_resolve(page: str) -> None:
    text = (DOCS / page).read_text()
    broken = [
        target
        for target in LINK.findall(text)
        if "://" not in target and not target.startswith("mailto:") and not (DOCS / target).exists()
    ]
    assert broken == [], f"docs/{page} links to missing files: {broken}"
