"""No import cycle in the agent, counting imports inside functions and under TYPE_CHECKING
(the layers themselves are import-linter's contracts in pyproject.toml, run by scripts/test)."""

from __future__ import annotations

import grimp


def test_the_agent_has_no_import_cycle() -> None:
    graph = grimp.build_graph("server_agent", cache_dir=None)
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if graph.chain_exists(importer=imported, imported=module):
                cycles.append(f"{module} <-> {imported}: "
                              + " -> ".join(graph.find_shortest_chain(importer=imported, imported=module) or ()))
    assert not cycles, "\n".join(cycles)
