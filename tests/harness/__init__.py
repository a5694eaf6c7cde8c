"""Real components for the tests, each started as the test's child and stopped by pid.

Nothing here touches the machine's own daemons: the session runs inside a
private mount + network namespace (isolation.py) and every file lives in a
pytest tmp dir.
"""
