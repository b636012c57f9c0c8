-- Agents that answer: agent runs, per-(agent, channel) response settings, thread and DM facts
-- the trigger rules need.

CREATE TABLE agent_runs (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    agent_id          uuid NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    input             jsonb NOT NULL,
    output            jsonb,
    status            text NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    created_at        timestamptz NOT NULL DEFAULT now(),
    channel_id        uuid REFERENCES channels (id) ON DELETE SET NULL,
    session_id        uuid REFERENCES agent_sessions (id) ON DELETE SET NULL,
    trigger_event_id  text,
    reply_event_id    text,
    runtime           text,
    chain_depth       integer NOT NULL DEFAULT 0,
    error             text,
    queued_at         timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    prompt_tokens     integer,
    completion_tokens integer
);
COMMENT ON TABLE agent_runs IS 'Every invocation of an agent runtime (microDAO schema, extended by the bridge)';
COMMENT ON COLUMN agent_runs.id IS 'Primary key (the run id runtimes quote back)';
COMMENT ON COLUMN agent_runs.agent_id IS 'The agent';
COMMENT ON COLUMN agent_runs.input IS 'What the runtime was given: triggering events and context';
COMMENT ON COLUMN agent_runs.output IS 'What it answered: the reply text';
COMMENT ON COLUMN agent_runs.status IS 'queued | running | completed | failed | cancelled';
COMMENT ON COLUMN agent_runs.created_at IS 'When the run was recorded';
COMMENT ON COLUMN agent_runs.channel_id IS 'The channel it answers in (bridge extension)';
COMMENT ON COLUMN agent_runs.session_id IS 'The agent session it belongs to (bridge extension)';
COMMENT ON COLUMN agent_runs.trigger_event_id IS 'The (first) event that addressed the agent (bridge extension)';
COMMENT ON COLUMN agent_runs.reply_event_id IS 'The Matrix event of the answer (bridge extension)';
COMMENT ON COLUMN agent_runs.runtime IS 'echo | openai | webhook (bridge extension)';
COMMENT ON COLUMN agent_runs.chain_depth IS 'Agent-to-agent turns before this run; bounded by bridge.max_agent_chain (bridge extension)';
COMMENT ON COLUMN agent_runs.error IS 'Why it failed or was cancelled (bridge extension)';
COMMENT ON COLUMN agent_runs.queued_at IS 'When it was queued (bridge extension)';
COMMENT ON COLUMN agent_runs.started_at IS 'When the runtime was called (bridge extension)';
COMMENT ON COLUMN agent_runs.finished_at IS 'When it completed, failed or was cancelled (bridge extension)';
COMMENT ON COLUMN agent_runs.prompt_tokens IS 'Prompt tokens, when the runtime reports them (bridge extension)';
COMMENT ON COLUMN agent_runs.completion_tokens IS 'Completion tokens, when the runtime reports them (bridge extension)';
CREATE INDEX agent_runs_agent_created_idx ON agent_runs (agent_id, created_at);
CREATE INDEX agent_runs_channel_created_idx ON agent_runs (channel_id, created_at);
CREATE INDEX agent_runs_reply_event_idx ON agent_runs (reply_event_id);

CREATE TABLE agent_channel_settings (
    agent_id   uuid NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    channel_id uuid NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    respond    text NOT NULL CHECK (respond IN ('mentions', 'all', 'never')),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, channel_id)
);
COMMENT ON TABLE agent_channel_settings IS 'When an agent answers in a channel (default: mentions; DMs: all)';
COMMENT ON COLUMN agent_channel_settings.agent_id IS 'The agent';
COMMENT ON COLUMN agent_channel_settings.channel_id IS 'The channel';
COMMENT ON COLUMN agent_channel_settings.respond IS 'mentions | all | never';
COMMENT ON COLUMN agent_channel_settings.updated_at IS 'When the setting was last changed';

ALTER TABLE messages ADD COLUMN thread_root_event_id text;
COMMENT ON COLUMN messages.thread_root_event_id IS 'Root of the thread the message is in, if any (bridge extension)';
CREATE INDEX messages_thread_root_idx ON messages (thread_root_event_id);

ALTER TABLE bridge_rooms ADD COLUMN is_direct boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN bridge_rooms.is_direct IS 'An invite marked the room as a direct chat';
