"""User agents publishing through the system agent (README "User session").

wire.py: what a push carries; policy.py: what the system agent accepts from
whom; link.py: the user agent's connection. The system side is
agent/sources/peers.py (one snapshot per peer), the user side
agent/sinks/peer_push.py.
"""
