import json
from support import *
from agentserver import *
from test_execution_agent import agent_run, task

def test_dbg(cluster, operators, agent):
    agent.script(node="x", steps=[HttpStatus(500, body="overloaded")], times=1)
    agent.script(node="x", steps=[Activity(), Drop()], times=1)
    op = operators()
    cluster.apply(agent_run("flaky", [task("x", maxAttempts=3)]))
    s = cluster.wait_phase("flaky", "Completed", "Failed", timeout=60)
    print(json.dumps(s, indent=1))
    print([ (r.node, r.attempt) for r in agent.requests])
    print(op.log()[-3000:])
    assert 0
