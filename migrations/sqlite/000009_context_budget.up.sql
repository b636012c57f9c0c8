-- Issue #23: a per-blueprint budget of context characters, and what a run's context lost to it.
ALTER TABLE bridge_blueprints ADD COLUMN context_chars integer CHECK (context_chars BETWEEN 0 AND 1000000);
ALTER TABLE agent_runs ADD COLUMN context_cut integer;
-- `!daarion forget`: agents ignore everything in the channel up to this event.
CREATE TABLE bridge_forget_marks (
    channel_id  text PRIMARY KEY REFERENCES channels (id) ON DELETE CASCADE,
    event_id    text NOT NULL,
    marked_at   text NOT NULL
);
