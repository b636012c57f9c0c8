-- Issue #25: agents that use tools. A blueprint names its tools (HTTP endpoints, MCP servers,
-- built-ins), what people see of their calls, and how many rounds a run makes; an agent may
-- narrow the list. Every call is a step of its run, recorded before it is executed.
ALTER TABLE bridge_blueprints ADD COLUMN tools jsonb;
ALTER TABLE bridge_blueprints ADD COLUMN show_tools text CHECK (show_tools IN ('none', 'summary', 'full'));
ALTER TABLE bridge_blueprints ADD COLUMN max_tool_rounds integer CHECK (max_tool_rounds BETWEEN 0 AND 20);
ALTER TABLE bridge_agents ADD COLUMN tools jsonb;
COMMENT ON COLUMN bridge_blueprints.tools IS 'The tools its agents may use (the allow-list): [{type: http | mcp | builtin, name, …}] as docs/tools.md describes; no secrets, only references';
COMMENT ON COLUMN bridge_blueprints.show_tools IS 'none | summary | full: what people see of tool calls (default summary)';
COMMENT ON COLUMN bridge_blueprints.max_tool_rounds IS 'Rounds of tool calls a run makes at most (default 5)';
COMMENT ON COLUMN bridge_agents.tools IS 'Narrows the blueprint''s tools for this agent: a JSON array of names or globs (files.read_*); NULL: all of them';

CREATE TABLE agent_run_steps (
    id            uuid PRIMARY KEY,
    run_id        uuid NOT NULL REFERENCES agent_runs (id) ON DELETE CASCADE,
    round         integer NOT NULL CHECK (round >= 0),
    position      integer NOT NULL CHECK (position >= 0),
    call_id       text NOT NULL,
    tool          text NOT NULL,
    arguments     text NOT NULL,
    status        text NOT NULL CHECK (status IN ('running', 'ok', 'failed', 'denied', 'interrupted')),
    result        text,
    error         text,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    duration_ms   bigint CHECK (duration_ms >= 0),
    UNIQUE (run_id, round, position)
);
CREATE INDEX agent_run_steps_run_id_idx ON agent_run_steps (run_id);
CREATE INDEX agent_run_steps_tool_idx ON agent_run_steps (tool);
COMMENT ON TABLE agent_run_steps IS 'daarion-bridge: every tool call of a run, recorded before it is executed (a call in flight at a crash is reported to the model as interrupted, never repeated)';
COMMENT ON COLUMN agent_run_steps.id IS 'Primary key (UUIDv7)';
COMMENT ON COLUMN agent_run_steps.run_id IS 'The run (agent_runs.id)';
COMMENT ON COLUMN agent_run_steps.round IS 'The round of tool calls, from 0';
COMMENT ON COLUMN agent_run_steps.position IS 'Place of the call in its round, from 0';
COMMENT ON COLUMN agent_run_steps.call_id IS 'The id the model gave the call (tool_call_id)';
COMMENT ON COLUMN agent_run_steps.tool IS 'The tool''s full name (weather, files.read_file, matrix.read_history), as the model asked for it';
COMMENT ON COLUMN agent_run_steps.arguments IS 'The arguments as the model gave them (JSON text, cut at 16 KiB)';
COMMENT ON COLUMN agent_run_steps.status IS 'running | ok | failed | denied | interrupted';
COMMENT ON COLUMN agent_run_steps.result IS 'What went back to the model (cut at tools.max_result_bytes)';
COMMENT ON COLUMN agent_run_steps.error IS 'Why it failed or was denied';
COMMENT ON COLUMN agent_run_steps.started_at IS 'When it was recorded, before it was executed';
COMMENT ON COLUMN agent_run_steps.finished_at IS 'When it ended';
COMMENT ON COLUMN agent_run_steps.duration_ms IS 'How long it ran';
