"""Compatibility layers for code written against other milter libraries.

:mod:`milterkit.compat.libmilterphp` ports libMilterPHP milters (``smfic*``
callbacks, ``reply()``, the SMFI* constants, ``accept_connections()``).
"""
