"""A table name that names a schema: a mistake is a 500 that says so, never an outage (issue 23, item 2)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

import pytest
import webtest

from conftest import SECRET
from wsgi_dbsession import ConfigurationError, SessionMiddleware


def writer(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    environ["dbsession"]["n"] = 1
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"saved"]


def test_a_schema_in_the_table_name_and_another_in_schema_are_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"'myschema.sessions' names a schema and schema='other'"):
        SessionMiddleware(writer, secret=SECRET, table_name="myschema.sessions", schema="other")


@pytest.mark.parametrize("create_table", [True, False])
def test_a_schema_that_does_not_exist_is_a_500_naming_it(
    db_url: str, create_table: bool, caplog: pytest.LogCaptureFixture
) -> None:
    schema = f"nosuch_{secrets.token_hex(4)}"
    middleware = SessionMiddleware(
        writer,
        secret=SECRET,
        url=db_url,
        table_name=f"{schema}.sessions",
        create_table=create_table,
        cleanup_interval=0,
    )
    try:
        with caplog.at_level(logging.ERROR, logger="wsgi_dbsession"):
            response = webtest.TestApp(middleware).get("/", expect_errors=True)
    finally:
        middleware.close()
    assert response.status_int == 500, response.text
    assert "Retry-After" not in response.headers
    (record,) = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert record.exc_info is not None
    message = str(record.exc_info[1])
    assert schema in message, message
    assert "url's database name" not in message, "the URL is right: the schema is what is missing"
