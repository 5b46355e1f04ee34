"""The broker server (`broker server start`): app.py (HTTP), calls.py (what a client may ask, and who),
daemons.py (controller and autostop watcher under a leader lease), dashboard.py. Needs the `server` extra."""
