"""Backends that hold identity attributes, behind one protocol: the embedded register, REST, FHIR R4 and
the IDP registry; the router that sends each attribute to its connector; resilience for remote ones."""
