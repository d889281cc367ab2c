"""Test suite of micacl-layers."""
