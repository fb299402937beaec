"""A job that is not a notification, for the job runtime's tests: a chore row and the task that does it.

The runtime's tests run on it so they prove the runtime alone (jobs/ knows no domain); installed by
settings.test only, so the real worker processes of the tests know its task too.
"""
