"""``agentctl``: the command line for a running namesync-agent."""
