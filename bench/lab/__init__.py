"""A lab of many hosts on Ray (the optional extra `lab`): `bench lab up` / `join` / `status`, `bench run --lab`.

Imported only when a lab is used: `bench --help` and the default `bench run` never import Ray. Modules:
  cluster   addresses, the token file, connecting, starting the head or a host (`ray start`), lab status
  packages  a content-addressed package cache per host (each variant crosses the network to a host once)
  host      what runs on a lab host inside a Ray task: lock the phone, fetch packages, deploy, run (bench/deploy)
  executor  the driver side: each round becomes a Ray task pinned to its phone's resource (bench/run/executor.py)
"""
