"""A tiny job: each node greets, shows where it is, counts to 3 and exits 0."""
import os
import time

rank = int(os.environ["SKYPILOT_NODE_RANK"])
nodes = os.environ["SKYPILOT_NUM_NODES"]
print(f"{os.environ.get('GREETING', 'hi')} from node {rank} of {nodes} in {os.getcwd()}", flush=True)
for i in range(1, 4):
    print(f"node {rank}: step {i}/3", flush=True)
    time.sleep(0.2)
print(f"node {rank}: done", flush=True)
