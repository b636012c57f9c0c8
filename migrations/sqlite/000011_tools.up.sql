-- Issue #25: agents that use tools (see the PostgreSQL migration for the columns' meaning).
ALTER TABLE bridge_blueprints ADD COLUMN tools text;
ALTER TABLE bridge_blueprints ADD COLUMN show_tools text CHECK (show_tools IN ('none', 'summary', 'full'));
ALTER TABLE bridge_blueprints ADD COLUMN max_tool_rounds integer CHECK (max_tool_rounds BETWEEN 0 AND 20);
ALTER TABLE bridge_agents ADD COLUMN tools text;

CREATE TABLE agent_run_steps (
    id            text PRIMARY KEY,
    run_id        text NOT NULL REFERENCES agent_runs (id) ON DELETE CASCADE,
    round         integer NOT NULL CHECK (round >= 0),
    position      integer NOT NULL CHECK (position >= 0),
    call_id       text NOT NULL,
    tool          text NOT NULL,
    arguments     text NOT NULL,
    status        text NOT NULL CHECK (status IN ('running', 'ok', 'failed', 'denied', 'interrupted')),
    result        text,
    error         text,
    started_at    text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    finished_at   text,
    duration_ms   integer CHECK (duration_ms >= 0),
    UNIQUE (run_id, round, position)
);
CREATE INDEX agent_run_steps_run_id_idx ON agent_run_steps (run_id);
CREATE INDEX agent_run_steps_tool_idx ON agent_run_steps (tool);
