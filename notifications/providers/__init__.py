"""Providers: one module per vendor, each defining a class named `Provider`, chosen per channel in settings."""
