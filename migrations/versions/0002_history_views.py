"""history views: v_population, v_progress, v_children, v_lineage, v_controller,
v_workers, v_cost

Revision ID: 0002
Revises: 0001
"""
from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

VIEWS = ("v_population", "v_progress", "v_children", "v_lineage", "v_controller",
         "v_workers", "v_cost")


def _sql(dialect: str) -> dict[str, str]:
    pg = dialect == "postgresql"
    mutator = "s.config->>'mutator'" if pg else "json_extract(s.config, '$.mutator')"
    hours = ("extract(epoch from (w.heartbeat_at - w.started_at)) / 3600.0" if pg else
             "(julianday(w.heartbeat_at) - julianday(w.started_at)) * 24.0")
    alive = "i.alive" if pg else "i.alive = 1"
    return {
        "v_population": f"""
SELECT s.name AS search, i.search_id, i.id, i.origin, i.fitness, i.val_loss,
       (SELECT count(*) FROM individuals y
         WHERE y.search_id = i.search_id AND y.origin = 'child' AND y.id > i.id) AS age_steps,
       i.parent_id, i.genotype, i.arch_hash, i.n_params, i.mult_adds, i.created_at
FROM individuals i JOIN searches s ON s.id = i.search_id
WHERE {alive} AND i.origin IN ('init', 'child')""",
        "v_progress": """
SELECT s.name AS search, c.search_id, c.step, c.id AS individual_id, c.fitness AS child_fitness,
       c.created_at,
       max(p.fitness) AS best_fitness, avg(p.fitness) AS mean_fitness,
       sqrt(CASE WHEN avg(p.fitness * p.fitness) - avg(p.fitness) * avg(p.fitness) < 0 THEN 0
                 ELSE avg(p.fitness * p.fitness) - avg(p.fitness) * avg(p.fitness) END)
           AS std_fitness,
       count(p.id) AS alive
FROM (SELECT id, search_id, fitness, created_at,
             row_number() OVER (PARTITION BY search_id ORDER BY id) AS step
      FROM individuals WHERE origin = 'child') c
JOIN searches s ON s.id = c.search_id
JOIN individuals p ON p.search_id = c.search_id AND p.origin IN ('init', 'child')
     AND p.id <= c.id
LEFT JOIN individuals k ON k.job_id = p.removed_by_job_id
WHERE k.id IS NULL OR k.id > c.id
GROUP BY s.name, c.search_id, c.step, c.id, c.fitness, c.created_at""",
        "v_children": f"""
SELECT s.name AS search, i.search_id, i.id, i.parent_id, p.fitness AS parent_fitness,
       i.fitness, i.fitness - p.fitness AS gain, i.mutation, i.controller_version,
       {mutator} AS mutator, i.genotype, i.examples_seen, i.train_seconds, i.created_at
FROM individuals i JOIN individuals p ON p.id = i.parent_id
JOIN searches s ON s.id = i.search_id
WHERE i.origin = 'child'""",
        "v_lineage": """
WITH RECURSIVE edges(search_id, id, ancestor_id, depth) AS (
    SELECT search_id, id, parent_id, 1 FROM individuals
    WHERE parent_id IS NOT NULL AND origin = 'child'
    UNION ALL
    SELECT e.search_id, e.id, a.parent_id, e.depth + 1
    FROM edges e JOIN individuals a ON a.id = e.ancestor_id
    WHERE a.parent_id IS NOT NULL AND a.origin = 'child'
)
SELECT s.name AS search, e.search_id, e.id, e.ancestor_id, e.depth
FROM edges e JOIN searches s ON s.id = e.search_id""",
        "v_controller": """
SELECT s.name AS search, c.search_id, c.version, c.episodes_seen, c.mean_reward, c.baseline,
       c.state IS NOT NULL AS has_weights, c.created_at
FROM controller_snapshots c JOIN searches s ON s.id = c.search_id""",
        "v_workers": f"""
SELECT w.id, w.host, w.pid, w.device, w.state, w.started_at, w.heartbeat_at, w.jobs_done,
       (SELECT count(*) FROM events e WHERE e.worker_id = w.id
          AND e.kind IN ('job failed', 'lease expired')) AS failures,
       {hours} AS hours,
       CASE WHEN {hours} > 0 THEN w.jobs_done / ({hours}) END AS jobs_per_hour
FROM workers w""",
        "v_cost": """
SELECT s.name AS search, s.id AS search_id,
       count(i.id) AS models_trained,
       avg(i.examples_seen) AS examples_per_model,
       coalesce(sum(i.examples_seen), 0) AS cost_examples,
       coalesce(sum(i.train_seconds), 0) AS train_seconds
FROM searches s LEFT JOIN individuals i ON i.search_id = s.id
     AND i.origin IN ('init', 'child')
GROUP BY s.name, s.id""",
    }


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_index("ix_events_worker_id", "events", ["worker_id"])
    op.create_index("ix_individuals_removed_by_job_id", "individuals", ["removed_by_job_id"])
    for name, body in _sql(dialect).items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW {name}")
    op.drop_index("ix_individuals_removed_by_job_id", "individuals")
    op.drop_index("ix_events_worker_id", "events")
