"""The daemon: wires sources, state, plan and sinks on one event loop."""
