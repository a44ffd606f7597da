"""Command-line interface: parsing and printing only, no logic (nothing imports `cli`)."""
