from typing import Any

from torpor.config.schema import PortForward
from torpor.hostagent.ports import Forward, Rule, listening_ports, plan


def rule(**fields: Any) -> Rule:
    """A rule as the host agent gets it: validated by the schema at the boot, read back from the boot record."""
    return Rule.from_record(PortForward(**fields).model_dump(mode="json"))


TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 0F02000A:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1
   3: 0100007F:1F91 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 4 1
"""
TCP6 = """  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:1F92 00000000000000000000000000000000:0000 0A
   1: 00000000000000000000000001000000:1F93 00000000000000000000000000000000:0000 0A
"""


def test_listening_ports_on_wildcard_and_loopback_only() -> None:
    # 22 on 0.0.0.0, 8080 on 127.0.0.1; 80 is on 10.0.2.15 only; 8081 is an established connection.
    assert listening_ports(TCP) == {22, 8080}
    assert listening_ports(TCP6) == {8082, 8083}


def test_default_forwards_same_port_on_loopback_except_ssh() -> None:
    assert plan({22, 8080}, []) == {Forward("127.0.0.1", 8080, 8080)}


def test_first_matching_rule_decides() -> None:
    rules = [
        rule(guestPort=8080, hostPort=18080),
        rule(guestPortRange=(8000, 8999), ignore=True),
        rule(guestPortRange=(9000, 9010), hostPort=19000, hostIP="0.0.0.0"),
    ]
    assert plan({8080, 8081, 9002, 5000}, rules) == {
        Forward("127.0.0.1", 18080, 8080),
        Forward("0.0.0.0", 19002, 9002),
        Forward("127.0.0.1", 5000, 5000),
    }


def test_catch_all_ignore_forwards_nothing() -> None:
    assert plan({8080, 9000}, [rule(ignore=True)]) == set()


def test_forward_spec_for_ssh() -> None:
    assert Forward("127.0.0.1", 18080, 8080).spec() == "127.0.0.1:18080:127.0.0.1:8080"


def test_host_port_range_and_wildcard_only_rules() -> None:
    from torpor.hostagent.ports import listeners

    tcp = (
        "  sl  local_address rem_address   st\n"
        "   0: 0100007F:1F90 00000000:0000 0A\n"  # 127.0.0.1:8080
        "   1: 00000000:1F91 00000000:0000 0A\n"  # 0.0.0.0:8081
    )
    found = listeners(tcp)
    assert found == {8080: False, 8081: True}
    ranged = Rule(None, (8080, 8081), "127.0.0.1", None, False, host_port_range=(9080, 9081))
    assert plan(set(found), [ranged]) == {Forward("127.0.0.1", 9080, 8080), Forward("127.0.0.1", 9081, 8081)}
    zero = Rule(None, None, "127.0.0.1", None, True, wildcard_only=True)  # ignore what listens on 0.0.0.0 only
    assert plan(set(found), [zero], {8081}) == {Forward("127.0.0.1", 8080, 8080)}
