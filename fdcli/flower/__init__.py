"""fd as a Flower app: the same bundles, checks and signatures as offline, sent over Flower's
Message API, so that a federation with a network can run on Flower's Deployment Engine (a
SuperLink, one SuperNode per institution) or its Simulation Engine. See docs/flower.md.

- :mod:`.client_app`: the ClientApp, one per institution (``app``);
- :mod:`.server_app`: the ServerApp, the coordinator (``app``);
- :mod:`.coordinator` and :mod:`.institution`: what each side does, usable without Flower's
  engines; :mod:`.wire`: a bundle folder as a Flower record and back;
  :mod:`.settings`: the run and node configurations.
"""
