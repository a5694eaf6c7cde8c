"""Which resolver is live: NetworkManager's DNS mode and its dnsmasq, followed over D-Bus."""
