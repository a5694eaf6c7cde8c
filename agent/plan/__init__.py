"""From snapshots to the desired name table, and from the table to file contents."""
