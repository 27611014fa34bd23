"""Real-MTA test infrastructure: private Postfix and Sendmail instances.

``postfix.PostfixInstance`` and ``sendmail.SendmailInstance`` start throw-away
MTAs on free loopback ports under temporary directories, so integration tests
can drive real MTAs against milterkit filters (and vice versa) without touching
the system configuration.  Both raise ``Unavailable`` when the MTA is missing;
``scripts/install-system-deps`` installs everything.
"""
