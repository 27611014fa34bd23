"""Cookbook filters: complete milters for real deployments (see docs/cookbook.md).

Each module is a filter with its own command line
(``python -m milterkit.contrib.clamav --help``):

* :mod:`~milterkit.contrib.dkim`: DKIM signing and verification (needs ``dkimpy``);
* :mod:`~milterkit.contrib.attachments`: attachment policy by extension, type and size;
* :mod:`~milterkit.contrib.greylist`: greylisting in SQLite or Redis;
* :mod:`~milterkit.contrib.clamav`: virus scanning through clamd;
* :mod:`~milterkit.contrib.spamassassin`: spam scoring through spamd.

They are written the way a user would write them: plain ``def`` callbacks
that block on the service they talk to. Importing this package imports none
of them.
"""
