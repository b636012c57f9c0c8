DROP TABLE IF EXISTS agent_run_steps;
ALTER TABLE bridge_agents DROP COLUMN IF EXISTS tools;
ALTER TABLE bridge_blueprints DROP COLUMN IF EXISTS max_tool_rounds;
ALTER TABLE bridge_blueprints DROP COLUMN IF EXISTS show_tools;
ALTER TABLE bridge_blueprints DROP COLUMN IF EXISTS tools;
