"""Headless batch renderer: the real Sonic Pi server, isolated, accelerated, resumable.

`server` boots and tears down one isolated server; `clip` renders one program on it;
`render` runs a batch on N servers; `fidelity` checks accelerated against real time.
"""
