"""The engines a release runs on, behind one interface (base.Backend): compose on one Docker
engine, and a Docker Swarm stack. select.backend_for is the only reader of agent.engine."""
