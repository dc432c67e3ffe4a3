"""The DAGGR workbench (``medialab workbench``): a daggr canvas whose nodes are templates (or a pipeline's
steps), each a thin client of the service's API over HTTP (``cli.remote.Remote``). Every node run is an
orchestrator job; daggr's own state is a scratchpad. See docs/daggr.md. daggr is the optional extra
``workbench``: import ``nodes``/``server`` only after ``offline.apply``."""
