"""Deadline-aware spot policies and their trace simulator (Can't Be Late, NSDI'24).

- `policies`: pure policy objects, `Policy.decide(Observation) -> Decision`, one per job run;
- `traces`: loading/validating trace JSON files;
- `simulator`: one policy over one availability window, and the per-sample rows;
- `omniscient`: the exact minimum-cost schedule (vectorised DP) used as the yardstick;
- `experiment`: policies x traces x random starts; `cli`: the `broker simulate` command.

Importing this package is cheap; the submodules import numpy.
"""
