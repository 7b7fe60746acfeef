"""Support shared by tests/ and benchmarks/: never shipped, and no shipped package imports it
(tests/test_import_graph.py checks that).

- ``canvas``      a procedural face placed in a larger canvas with a known similarity
- ``servers``     ``start_server`` and ``GatedRunner`` (a model-free runner held until released)
- ``fuzz``        malformed messages for the server and a sender that counts the replies
- ``hostile``     the hostile local client, run as ``python -m testkit.hostile MODE ENDPOINT ARGS``
- ``fidelity``    the edit-fidelity protocol (``python benchmarks/fidelity.py`` runs it)
- ``live_panel``  the live panel in the real GIMP 3 (``python benchmarks/live_panel.py`` runs it)
"""
