DROP TABLE IF EXISTS agent_run_steps;
ALTER TABLE bridge_agents DROP COLUMN tools;
ALTER TABLE bridge_blueprints DROP COLUMN max_tool_rounds;
ALTER TABLE bridge_blueprints DROP COLUMN show_tools;
ALTER TABLE bridge_blueprints DROP COLUMN tools;
