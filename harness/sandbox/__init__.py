"""The provider sandbox: a local stand-in for the email, SMS and push vendors that records every accepted message.

Free of Django so `python -m harness.sandbox.server` runs without settings.
"""
