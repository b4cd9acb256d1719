from sqlalchemy import inspect

from scoring import migrate
from scoring.database import make_engine
from scoring.schema import Base


def test_migrations_build_the_whole_schema_and_match_the_models(database_url: str) -> None:
    migrate.upgrade(database_url)
    engine = make_engine(database_url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
        # autogenerate must find nothing left to do: models and revisions agree
        assert migrate.pending_differences(engine) == []
    finally:
        engine.dispose()


def test_downgrade_to_base_removes_everything(database_url: str) -> None:
    migrate.upgrade(database_url)
    migrate.downgrade(database_url, "base")
    engine = make_engine(database_url)
    try:
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
