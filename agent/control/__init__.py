"""The control socket: a small versioned JSON protocol for agentctl and peers."""
