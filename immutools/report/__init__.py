"""The report model (``model``), its JSON schema and its renderings (``render``)."""
