"""The CLI as users meet it, in a subprocess: one-line errors, search management."""
from __future__ import annotations

import json

import pytest

from tests.helpers import assert_one_line_error, run_cli


def test_search_commands_end_to_end(db_url, tmp_path):
    r = run_cli("search", "create", "s1", "--population", "4", "--sample", "2", "--steps",
                "5", "--mutator", "random", db_url=db_url, cwd=str(tmp_path))
    assert r.code == 0, r.err
    assert_one_line_error(run_cli("search", "create", "s1", db_url=db_url, cwd=str(tmp_path)),
                          "exists already")
    r = run_cli("search", "list", "--json", db_url=db_url, cwd=str(tmp_path))
    rows = json.loads(r.out)
    assert rows[0]["name"] == "s1" and rows[0]["status"] == "created"
    r = run_cli("search", "show", "s1", "--json", db_url=db_url, cwd=str(tmp_path))
    assert json.loads(r.out)["config"]["population"] == 4
    assert run_cli("search", "pause", "s1", db_url=db_url).code == 0
    assert_one_line_error(run_cli("search", "pause", "s1", db_url=db_url), "cannot pause")
    assert run_cli("search", "resume", "s1", db_url=db_url).code == 0
    assert_one_line_error(run_cli("search", "show", "nope", db_url=db_url),
                          "no search named 'nope'")
    assert_one_line_error(run_cli("status", "nope", db_url=db_url), "no search named")


@pytest.mark.parametrize("args, needle", [
    (["search", "create", "x", "--population", "1"], "population must be between"),
    (["search", "create", "x", "--population", "3", "--sample", "4"], "must not exceed"),
    (["search", "create", "x", "--mutator", "genetic"], "Invalid value for '--mutator'"),
    (["search", "create", "x", "--config", "/nonexistent.toml"], "config file not found"),
    (["search", "frobnicate"], "No such command"),
    (["worker", "--gpu", "0", "--cpu"], "not both"),
])
def test_bad_input_is_one_line(args, needle, tmp_path):
    r = run_cli(*args, db_url=f"sqlite:///{tmp_path / 'x.sqlite'}")
    assert_one_line_error(r, needle)


def test_unreachable_database_never_prints_the_password(tmp_path):
    url = "postgresql://alice:s3cret-pw@127.0.0.1:1/renas"
    r = run_cli("search", "list", db_url=url)
    assert_one_line_error(r, "cannot reach the database", "alice:***@127.0.0.1")
    assert "s3cret-pw" not in r.out + r.err
    r = run_cli("--db", url, "--debug", "search", "list")
    assert r.code == 1 and "Traceback" in r.err     # --debug brings the traceback back
    assert_one_line_error(run_cli("search", "list", db_url="mysql://u:pw@h/d"),
                          "unsupported database")
    assert_one_line_error(run_cli("search", "list", db_url="not a url"), "not a database URL")


def test_schema_missing_or_outdated_says_what_to_run(pg_url, tmp_path):
    import sqlalchemy as sa

    from tests.conftest import new_pg_url
    empty = new_pg_url(migrated=False)
    assert_one_line_error(run_cli("search", "list", db_url=empty), "renas-db db upgrade")
    r = run_cli("db", "current", db_url=empty)
    assert r.code == 0 and "empty" in r.out
    assert run_cli("db", "upgrade", db_url=empty).code == 0
    assert "up to date" in run_cli("db", "current", db_url=empty).out
    eng = sa.create_engine(empty)
    with eng.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    eng.dispose()
    assert_one_line_error(run_cli("search", "list", db_url=empty), "newer than this renas-db")
    # a brand-new SQLite file is upgraded by itself
    r = run_cli("search", "list", db_url=f"sqlite:///{tmp_path / 'fresh.sqlite'}")
    assert r.code == 0, r.err


def test_history_commands_errors_and_formats(db_url, tmp_path):
    r = run_cli("search", "create", "h", "--population", "2", "--sample", "2",
                "--mutator", "random", db_url=db_url)
    assert r.code == 0, r.err
    assert_one_line_error(run_cli("sql", "DELETE FROM searches", db_url=db_url),
                          "only read-only queries")
    r = run_cli("sql", "SELECT name, status FROM searches", "--csv", db_url=db_url)
    assert r.code == 0 and r.out.splitlines() == ["name,status", "h,created"]
    r = run_cli("sql", "SELECT name FROM searches", "--json", db_url=db_url)
    assert json.loads(r.out) == [{"name": "h"}]
    assert_one_line_error(run_cli("show", "999", db_url=db_url), "no individual with id 999")
    assert_one_line_error(run_cli("lineage", "999", db_url=db_url), "no individual")
    assert_one_line_error(run_cli("export", "h", "-o", str(tmp_path / "x.json"),
                                  db_url=db_url), "no evaluated individuals")
    assert_one_line_error(run_cli("plot", "h", "-o", str(tmp_path / "x.gif"), db_url=db_url),
                          "must end in .png")


def test_show_diff_marks_the_mutated_blocks(tmp_path):
    """A real small (dry-run) search, then `show ID --diff`: the nodes marked in the
    drawing are the child's blocks that differ from its parent's."""
    from xml.etree import ElementTree

    from tests.e2e.common import create
    db_url = f"sqlite:///{tmp_path / 'd.sqlite'}"
    create(db_url, "d", tmp_path, "--population", "4", "--sample", "2", "--steps", "3",
           "--mutator", "single", "--blocks", "4")
    r = run_cli("worker", "--search", "d", "--dry-run", "0", "--max-jobs", "10",
                "--idle-exit", "5", "--poll", "0.2", db_url=db_url, cwd=str(tmp_path))
    assert r.code == 0, r.err
    rows = json.loads(run_cli("sql", "SELECT c.id, c.genotype AS child, p.genotype AS parent "
                              "FROM individuals c JOIN individuals p ON p.id = c.parent_id "
                              "ORDER BY c.id", "--json", db_url=db_url).out)
    assert len(rows) == 3
    svg_ns = "{http://www.w3.org/2000/svg}"
    for row in rows:
        out = tmp_path / f"diff{row['id']}.svg"
        r = run_cli("show", str(row["id"]), "--diff", "-o", str(out), db_url=db_url)
        assert r.code == 0, r.err
        assert "parent " in r.out and "changed: " in r.out
        child = [b.strip() for b in row["child"].split("|")]
        parent = [b.strip() for b in row["parent"].split("|")]
        changed = {j for j, (c, p) in enumerate(zip(child, parent)) if c != p}
        assert changed          # the single mutator always changes one slot
        root = ElementTree.parse(out).getroot()
        marked = {g.get("id") for g in root.iter(f"{svg_ns}g")
                  if "mutated" in g.get("class", "").split()
                  and "node" in g.get("class", "").split()}
        assert marked == {f"{who}.b{j}" for who in ("parent", "child") for j in changed}, row
    # the initial population has no parent
    first = json.loads(run_cli("sql", "SELECT min(id) AS id FROM individuals", "--json",
                               db_url=db_url).out)[0]["id"]
    assert_one_line_error(run_cli("show", str(first), "--diff", db_url=db_url),
                          f"individual {first} has no parent")
    # without Graphviz's dot on PATH: one line naming the package
    no_dot = tmp_path / "bin"
    no_dot.mkdir()
    from tests.helpers import cli_env
    r = run_cli("show", str(rows[0]["id"]), "-o", str(tmp_path / "c.png"),
                env=cli_env(db_url, PATH=str(no_dot)))
    assert_one_line_error(r, "drawing cells needs Graphviz", "apt-get install graphviz")
    assert not (tmp_path / "c.png").exists()
    r = run_cli("show", str(rows[0]["id"]), "-o", str(tmp_path / "c.svg"), db_url=db_url)
    assert r.code == 0 and (tmp_path / "c.svg").read_text().count('class="edge"') >= 8


def test_search_create_warns_when_this_machine_cannot_read_the_dataset(tmp_path):
    db = f"sqlite:///{tmp_path / 'x.sqlite'}"
    r = run_cli("search", "create", "c1", "--dataset", "cifar10", "--population", "5",
                db_url=db)
    assert r.code == 0, r.err
    lines = r.err.splitlines()
    assert len(lines) == 2 and "search c1 created" in lines[0], r.err
    assert lines[1].startswith("warning: this machine cannot read dataset cifar10 "), r.err
    assert "cifar10 needs --data-dir" in lines[1] and "renas-db worker --data-dir" in lines[1]
    r = run_cli("search", "create", "s1", "--dataset", "synthetic", db_url=db)
    assert r.code == 0 and "warning" not in r.err, r.err
