"""Shared pieces of the real-process scenarios."""
from __future__ import annotations

from sqlalchemy import func, select

from renas_db.db.models import Event, Individual, Job, Search, Worker
from renas_db.db.session import Store
from tests.helpers import run_cli


def create(db_url: str, name: str, tmp_path, *args: str) -> None:
    r = run_cli("search", "create", name, "--checkpoint-root", str(tmp_path / "ck"), *args,
                db_url=db_url, cwd=str(tmp_path))
    assert r.code == 0, r.err


def running_job_of(store: Store, pid: int, kind: str | None = None):  # type: ignore[no-untyped-def]
    with store.transaction(write=False) as s:
        q = (select(Job.id, Job.kind, Job.attempt).join(Worker, Worker.id == Job.worker_id)
             .where(Job.state == "running", Worker.pid == pid))
        if kind:
            q = q.where(Job.kind == kind)
        return s.execute(q).first()


def job_row(store: Store, job_id: int):  # type: ignore[no-untyped-def]
    with store.transaction(write=False) as s:
        return s.execute(select(Job.state, Job.attempt).where(Job.id == job_id)).one()


def search_status(store: Store, name: str) -> str:
    with store.transaction(write=False) as s:
        return s.scalar(select(Search.status).where(Search.name == name))


def count(store: Store, what, *where) -> int:  # type: ignore[no-untyped-def]
    with store.transaction(write=False) as s:
        return s.scalar(select(func.count()).select_from(what).where(*where))


def events(store: Store, kind: str) -> int:
    return count(store, Event, Event.kind == kind)


def assert_invariants(db_url: str, name: str, tmp_path) -> None:
    r = run_cli("check", name, db_url=db_url, cwd=str(tmp_path))
    assert r.code == 0, r.out + r.err
    assert "all invariants hold" in r.err


__all__ = ["Individual", "Job"]
