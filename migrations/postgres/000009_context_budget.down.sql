DROP TABLE bridge_forget_marks;
ALTER TABLE agent_runs DROP COLUMN context_cut;
ALTER TABLE bridge_blueprints DROP COLUMN context_chars;
