"""Test hosts in network namespaces: the test bed lives in distml.runtime.testbed."""

from distml.runtime.testbed import Host, can_make_namespaces, hosts, limit, set_link  # noqa: F401
