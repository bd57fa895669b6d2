"""Importable, module-level flow factories, one module per operation.

Factories take no client objects, so TaskFlow can call them again by name
when it resumes a flow from its logbook (``engines.flow_from_detail``).
"""
