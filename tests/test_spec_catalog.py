"""`[store] catalog`: a PostgreSQL (or SQLite) URL for a local store's catalog; anything
else, or a catalog beside a server's `store.url`, is a SpecError naming the key and value."""
from __future__ import annotations

import pytest

from test_spec import BASE, edited, parse, spec_error

PG = "postgresql://nd:secret@db.example:5432/ndstore"


def with_catalog(value: str) -> str:
    return edited(after='path = "store"', new=f"catalog = {value}")


def test_without_a_catalog_key_the_store_keeps_its_own_file(tmp_path):
    assert parse(BASE, tmp_path).store.catalog is None


@pytest.mark.parametrize("url", [
    PG, "postgresql+psycopg://nd@db.example/ndstore", "postgresql://db.example/ndstore?sslmode=require",
    "postgresql:///ndstore",
])
def test_a_postgresql_url_is_kept_as_written(tmp_path, url):
    spec = parse(with_catalog(f'"{url}"'), tmp_path)
    assert spec.store.catalog == url and spec.store.path == tmp_path / "store"


def test_a_sqlite_url_resolves_against_the_specs_folder(tmp_path):
    assert parse(with_catalog('"sqlite:///shared/catalog.sqlite"'), tmp_path).store.catalog == \
        f"sqlite:///{tmp_path / 'shared/catalog.sqlite'}"
    assert parse(with_catalog('"sqlite:////srv/nd/catalog.sqlite"'), tmp_path).store.catalog == \
        "sqlite:////srv/nd/catalog.sqlite"


@pytest.mark.parametrize("value, shown", [
    ('"mysql://nd@db.example/ndstore"', "'mysql://nd@db.example/ndstore'"),
    ('"postgres://nd@db.example/ndstore"', "'postgres://nd@db.example/ndstore'"),
    ('"postgresql+psycopg2://nd@db.example/ndstore"', "'postgresql+psycopg2://nd@db.example/ndstore'"),
    ('"postgresql://db.example"', "'postgresql://db.example'"),
    ('"sqlite://"', "'sqlite://'"),
    ('"catalog.sqlite"', "'catalog.sqlite'"),
    ('""', "''"),
    ("5432", "5432"),
])
def test_anything_else_is_a_spec_error_naming_key_and_value(tmp_path, value, shown):
    message = spec_error(with_catalog(value), tmp_path)
    assert "store.catalog" in message and shown in message and "\n" not in message


def test_an_error_never_shows_the_password(tmp_path):
    message = spec_error(with_catalog('"postgresql+psycopg2://nd:secret@db.example/ndstore"'), tmp_path)
    assert "secret" not in message and "nd:***@db.example" in message


def test_a_catalog_beside_a_server_url_is_refused(tmp_path):
    text = edited('path = "store"', f'url = "http://127.0.0.1:8080/nd"\ncatalog = "{PG}"')
    message = spec_error(text, tmp_path)
    assert "store.catalog" in message and "store.url" in message and "own catalog" in message
    assert "secret" not in message
