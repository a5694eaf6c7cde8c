import pytest
from tests.harness.agent import Agent, toml_config
pytestmark = pytest.mark.integration
def test_smoke(dnsmasq, agent):
    agent.config.write_text(toml_config(socket=agent.socket, addn_hosts=dnsmasq.addn_hosts, pid_file=dnsmasq.pid_file, hosts_file=None, static={"a.dns.test": ["10.1.2.3"]}))
    agent.start()
    from tests.harness.wait import until
    until(lambda: dnsmasq.query("a.dns.test").records == ("10.1.2.3",))
    print(dnsmasq.reads(), dnsmasq.query("b.dns.test"), dnsmasq.query("a.dns.test", "AAAA"))
